//! `log:` (SPEC §4): how many recent log lines a node keeps for `GET /v1/logs`,
//! in lines (`keep`, default 10,000) and bytes (`max_bytes`, default 8 MiB);
//! bounds, typos and bad values are errors naming the file, the key and the
//! problem, as `colony check-config` prints them.

use std::path::Path;

use colony::config::LogSection;
use colony::{ConfigError, NodeConfig};

const FILE: &str = "configs/x.yaml";

fn parse(yaml: &str) -> Result<NodeConfig, ConfigError> {
    NodeConfig::parse(Path::new(FILE), yaml)
}

fn refused(yaml: &str) -> ConfigError {
    match parse(yaml) {
        Ok(config) => panic!("config parsed but should not have: {config:?}\n{yaml}"),
        Err(e) => e,
    }
}

#[test]
fn a_node_keeps_ten_thousand_lines_and_8_mib_unless_told() {
    let config = parse("node: { name: alpha }\n").expect("parses");
    assert_eq!(
        config.log,
        LogSection {
            keep: 10_000,
            max_bytes: 8 * 1024 * 1024
        }
    );
    let config =
        parse("node: { name: alpha }\nlog: { keep: 0, max_bytes: 1000 }\n").expect("parses");
    assert_eq!((config.log.keep, config.log.max_bytes), (0, 1000));
}

#[test]
fn bounds_typos_and_bad_values_are_named() {
    let err = refused("node: { name: alpha }\nlog: { keep: 1000001 }\n");
    assert_eq!(
        err.to_string(),
        "configs/x.yaml: log.keep: 1000001 is more than the most allowed, 1000000"
    );
    let err = refused("node: { name: alpha }\nlog: { max_bytes: 2000000000 }\n");
    assert_eq!(err.key, "log.max_bytes");
    assert!(err.problem.contains("most allowed"), "{err}");
    let err = refused("node: { name: alpha }\nlog: { kep: 5 }\n");
    assert_eq!(
        err.to_string(),
        "configs/x.yaml: log.kep: unknown field, expected keep or max_bytes"
    );
    let err = refused("node: { name: alpha }\nlog: { keep: lots }\n");
    assert_eq!((err.file.as_str(), err.key.as_str()), (FILE, "log.keep"));
    let err = refused("node: { name: alpha }\nlog: { keep: 2.5 }\n");
    assert_eq!(err.key, "log.keep");
}
