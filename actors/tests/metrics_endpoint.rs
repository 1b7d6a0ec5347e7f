//! `GET /metrics` of real node processes, read with a strict Prometheus text (0.0.4)
//! parser written here: every family has its `# HELP` and `# TYPE` before its
//! samples, families are contiguous, no sample repeats, histograms are
//! cumulative with `le="+Inf"` equal to `_count`. Then the numbers must be exact:
//! a master spawns worker-a (math + one chaos worker); 7 `chaos echo`, 3 `chaos
//! panic` and 2 requests for an unknown chaos subject through worker-a's API count
//! 12 requests, 3 `HandlerPanicked`, 2 `BadRequest` (no other kind), a histogram
//! of 12, 3 worker restarts and one bridge peer with traffic both ways. On the
//! master: worker-a is online with no restarts; a request for a service nobody
//! runs counts one `NoSuchService` call failure under `service="(other)"`; after `kill -KILL` of worker-a
//! the master shows one restart, worker-a online again, and a bridge reconnect.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

// ---------------------------------------------------------------------------
// A strict parser of the Prometheus text format, version 0.0.4.
// ---------------------------------------------------------------------------

/// A sample's labels, sorted by name.
type Labels = Vec<(String, String)>;
/// Every sample: (sample name, sorted labels) → value.
type Samples = BTreeMap<(String, Labels), f64>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

#[derive(Debug, Default)]
struct Family {
    help: bool,
    kind: Option<Kind>,
    samples: usize,
}

/// Parses `text` strictly; the error names the line and the rule it breaks.
fn parse_prometheus(text: &str) -> Result<Samples, String> {
    let body = text
        .strip_suffix('\n')
        .ok_or("the text does not end with a newline")?;
    let mut families: HashMap<String, Family> = HashMap::new();
    let mut current: Option<String> = None;
    let mut samples = Samples::new();
    for (i, line) in body.split('\n').enumerate() {
        let at = |what: String| format!("line {} `{line}`: {what}", i + 1);
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            metric_name(name).map_err(at)?;
            help_text(help).map_err(at)?;
            let family = open_family(&mut families, &mut current, name).map_err(at)?;
            if family.help {
                return Err(at(format!("a second HELP for {name}")));
            }
            family.help = true;
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .ok_or_else(|| at("TYPE without a type".into()))?;
            metric_name(name).map_err(at)?;
            let kind = match kind {
                "counter" => Kind::Counter,
                "gauge" => Kind::Gauge,
                "histogram" => Kind::Histogram,
                other => return Err(at(format!("unknown type `{other}`"))),
            };
            let family = open_family(&mut families, &mut current, name).map_err(at)?;
            if family.kind.is_some() {
                return Err(at(format!("a second TYPE for {name}")));
            }
            family.kind = Some(kind);
        } else if line.starts_with('#') {
            return Err(at("neither `# HELP` nor `# TYPE`".into()));
        } else {
            let (name, labels, value) = sample(line).map_err(at)?;
            let family_name = current
                .clone()
                .ok_or_else(|| at("a sample before any HELP and TYPE".into()))?;
            let family = families.get_mut(&family_name).expect("current is declared");
            let Some(kind) = family.kind else {
                return Err(at(format!("a sample of {family_name} before its TYPE")));
            };
            if !family.help {
                return Err(at(format!("a sample of {family_name} before its HELP")));
            }
            let belongs = match kind {
                Kind::Histogram => name
                    .strip_prefix(family_name.as_str())
                    .is_some_and(|suffix| ["_bucket", "_sum", "_count"].contains(&suffix)),
                _ => name == family_name,
            };
            if !belongs {
                return Err(at(format!(
                    "sample {name} inside family {family_name} ({kind:?}): \
                     samples of a family must be contiguous and named after it"
                )));
            }
            let has_le = labels.iter().any(|(k, _)| k == "le");
            if kind == Kind::Histogram && has_le != name.ends_with("_bucket") {
                return Err(at(
                    "a histogram's _bucket samples, and only they, have `le`".into(),
                ));
            }
            let monotonic =
                kind == Kind::Counter || name.ends_with("_bucket") || name.ends_with("_count");
            if monotonic && (value.is_nan() || value < 0.0) {
                return Err(at(format!("a count of {value}")));
            }
            family.samples += 1;
            if samples.insert((name.clone(), labels), value).is_some() {
                return Err(at(format!("a second sample {name} with the same labels")));
            }
        }
    }
    for (name, family) in &families {
        if !family.help || family.kind.is_none() {
            return Err(format!("family {name} lacks its HELP or TYPE"));
        }
        if family.kind == Some(Kind::Histogram) {
            check_histogram(name, &samples)?;
        }
    }
    Ok(samples)
}

/// Starts or continues family `name`: a family continues only while no other
/// one has started, and gets no HELP or TYPE after its first sample.
fn open_family<'a>(
    families: &'a mut HashMap<String, Family>,
    current: &mut Option<String>,
    name: &str,
) -> Result<&'a mut Family, String> {
    if current.as_deref() == Some(name) {
        let family = families.get_mut(name).expect("current is declared");
        if family.samples > 0 {
            return Err(format!("HELP or TYPE of {name} after its samples"));
        }
        return Ok(family);
    }
    if families.contains_key(name) {
        return Err(format!(
            "family {name} again after another family: families must be contiguous"
        ));
    }
    *current = Some(name.to_string());
    Ok(families.entry(name.to_string()).or_default())
}

/// Per label set (without `le`): buckets non-decreasing in `le` order, a `+Inf`
/// bucket equal to `_count`, and a `_sum`.
fn check_histogram(family: &str, samples: &Samples) -> Result<(), String> {
    let bucket = format!("{family}_bucket");
    let (sum, count) = (format!("{family}_sum"), format!("{family}_count"));
    let mut series: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
    for ((name, labels), value) in samples {
        if *name == bucket {
            let le = labels.iter().find(|(k, _)| k == "le").expect("checked");
            let le = number(&le.1).map_err(|e| format!("{name}{labels:?}: le: {e}"))?;
            let rest: Labels = labels.iter().filter(|(k, _)| k != "le").cloned().collect();
            series.entry(rest).or_default().push((le, *value));
        } else if (*name == sum || *name == count)
            && !samples.contains_key(&(bucket.clone(), with_le(labels, "+Inf")))
        {
            return Err(format!("{name}{labels:?} has no le=\"+Inf\" bucket"));
        }
    }
    for (labels, mut buckets) in series {
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        for pair in buckets.windows(2) {
            if pair[0].0 == pair[1].0 {
                return Err(format!("{bucket}{labels:?}: le {} twice", pair[0].0));
            }
            if pair[1].1 < pair[0].1 {
                return Err(format!(
                    "{bucket}{labels:?} is not cumulative: le {} has {}, le {} has {}",
                    pair[0].0, pair[0].1, pair[1].0, pair[1].1
                ));
            }
        }
        let (le, inf) = *buckets.last().expect("one bucket at least");
        if le != f64::INFINITY {
            return Err(format!("{bucket}{labels:?} has no le=\"+Inf\" bucket"));
        }
        match samples.get(&(count.clone(), labels.clone())) {
            Some(n) if *n == inf => {}
            Some(n) => {
                return Err(format!(
                    "{bucket}{labels:?}: le=\"+Inf\" is {inf} but {count} is {n}"
                ))
            }
            None => return Err(format!("{bucket}{labels:?} has no {count}")),
        }
        if !samples.contains_key(&(sum.clone(), labels.clone())) {
            return Err(format!("{bucket}{labels:?} has no {sum}"));
        }
    }
    Ok(())
}

fn with_le(labels: &Labels, le: &str) -> Labels {
    let mut all = labels.clone();
    all.push(("le".into(), le.into()));
    all.sort();
    all
}

/// `name{label="value",...} number` or `name number`.
fn sample(line: &str) -> Result<(String, Labels, f64), String> {
    let end = line.find(['{', ' ']).ok_or("a sample without a value")?;
    let name = &line[..end];
    metric_name(name)?;
    let mut rest = &line[end..];
    let mut labels = Labels::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices();
        'labels: loop {
            let start = chars.offset();
            let (eq, _) = chars
                .by_ref()
                .find(|(_, c)| *c == '=')
                .ok_or("a label without `=`")?;
            let key = &inner[start..eq];
            label_name(key)?;
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err(format!("label {key}: the value is not quoted"));
            }
            let mut value = String::new();
            loop {
                match chars.next().map(|(_, c)| c) {
                    None => return Err(format!("label {key}: the value has no end")),
                    Some('"') => break,
                    Some('\\') => match chars.next().map(|(_, c)| c) {
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        Some('n') => value.push('\n'),
                        other => return Err(format!("label {key}: escape \\{other:?}")),
                    },
                    Some(c) => value.push(c),
                }
            }
            if labels.iter().any(|(k, _)| k == key) {
                return Err(format!("label {key} twice"));
            }
            labels.push((key.to_string(), value));
            match chars.next() {
                Some((_, ',')) => {}
                Some((at, '}')) => {
                    rest = &inner[at + 1..];
                    break 'labels;
                }
                _ => return Err("labels must be separated by `,` and end with `}`".into()),
            }
        }
    }
    let value = rest
        .strip_prefix(' ')
        .ok_or("no single space before the value")?;
    let value = number(value)?;
    labels.sort();
    Ok((name.to_string(), labels, value))
}

/// A float as Go's `strconv.ParseFloat` writes it, or `+Inf`, `-Inf`, `NaN`.
fn number(text: &str) -> Result<f64, String> {
    match text {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ if text.bytes().any(|b| b.is_ascii_digit())
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b)) =>
        {
            text.parse().map_err(|e| format!("value `{text}`: {e}"))
        }
        _ => Err(format!("value `{text}` is not a number")),
    }
}

fn metric_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':');
    if first && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
        Ok(())
    } else {
        Err(format!("`{name}` is not a metric name"))
    }
}

fn label_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if first && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(())
    } else {
        Err(format!("`{name}` is not a label name"))
    }
}

/// HELP text may escape only `\\` and `\n`.
fn help_text(help: &str) -> Result<(), String> {
    let mut chars = help.chars();
    while let Some(c) = chars.next() {
        if c == '\\' && !matches!(chars.next(), Some('\\' | 'n')) {
            return Err("HELP text with an escape other than \\\\ or \\n".into());
        }
    }
    Ok(())
}

/// The value of sample `name` with exactly `labels`.
fn get(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut labels: Labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    labels.sort();
    samples.get(&(name.to_string(), labels)).copied()
}

#[test]
fn the_parser_takes_valid_text_and_rejects_broken_text() {
    let valid = "# HELP a_total Things, with a \\\\ backslash\\n.\n\
                 # TYPE a_total counter\n\
                 a_total{node=\"n\",path=\"C:\\\\dir \\\"x\\\"\\nz\"} 3\n\
                 a_total{path=\"b\",node=\"n\"} 0\n\
                 # HELP lat_seconds Latency.\n\
                 # TYPE lat_seconds histogram\n\
                 lat_seconds_bucket{le=\"1\"} 2\n\
                 lat_seconds_bucket{le=\"0.1\"} 1\n\
                 lat_seconds_bucket{le=\"+Inf\"} 3\n\
                 lat_seconds_sum 1.5e0\n\
                 lat_seconds_count 3\n\
                 # HELP up Up.\n\
                 # TYPE up gauge\n\
                 up -0.25\n";
    let samples = parse_prometheus(valid).unwrap();
    assert_eq!(samples.len(), 8, "{samples:?}");
    assert_eq!(
        get(
            &samples,
            "a_total",
            &[("node", "n"), ("path", "C:\\dir \"x\"\nz")]
        ),
        Some(3.0)
    );
    assert_eq!(
        get(&samples, "a_total", &[("node", "n"), ("path", "b")]),
        Some(0.0)
    );
    assert_eq!(
        get(&samples, "lat_seconds_bucket", &[("le", "+Inf")]),
        Some(3.0)
    );
    assert_eq!(get(&samples, "lat_seconds_sum", &[]), Some(1.5));
    assert_eq!(get(&samples, "up", &[]), Some(-0.25));

    let invalid = [
        // Samples of a_total before and after another family's.
        (
            "# HELP a_total A.\n# TYPE a_total counter\na_total{k=\"1\"} 1\n\
             # HELP b B.\n# TYPE b gauge\nb 2\na_total{k=\"2\"} 1\n",
            "contiguous",
        ),
        // Buckets that shrink as le grows (listed out of order on purpose).
        (
            "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"0.1\"} 2\n\
             h_bucket{le=\"+Inf\"} 2\nh_sum 0.5\nh_count 2\n",
            "not cumulative",
        ),
        // A sample after HELP but before TYPE.
        ("# HELP c C.\nc 1\n# TYPE c counter\n", "before its TYPE"),
    ];
    for (text, why) in invalid {
        match parse_prometheus(text) {
            Ok(samples) => panic!("accepted {text:?} as {samples:?}"),
            Err(e) => assert!(
                e.contains(why),
                "{text:?} was rejected for {e:?}, not {why:?}"
            ),
        }
    }
}

// ---------------------------------------------------------------------------
// The cluster.
// ---------------------------------------------------------------------------

/// The nine error kinds, as `/metrics` labels them.
const KINDS: [&str; 9] = [
    "NoSuchService",
    "BadRequest",
    "Rejected",
    "Timeout",
    "Overloaded",
    "HandlerPanicked",
    "ServiceFailed",
    "NodeDown",
    "Application",
];

const ECHOES: usize = 7;
const PANICS: usize = 3;
const UNKNOWN_SUBJECT: usize = 2;

/// `GET /metrics` of `api`, parsed; panics with the text and the cluster's log.
fn metrics(api: &str, master: &NodeProcess) -> (Samples, String) {
    let (code, body) = http(api, "GET", "/metrics", "")
        .unwrap_or_else(|e| panic!("GET {api}/metrics: {e}; stderr:\n{}", master.log()));
    assert_eq!(code, 200, "GET {api}/metrics: {body}");
    match parse_prometheus(&body) {
        Ok(samples) => (samples, body),
        Err(e) => panic!("GET {api}/metrics is not strict Prometheus text: {e}\n{body}"),
    }
}

/// Polls `api`'s metrics every 20 ms until `cond` holds; panics after 10 s with
/// the last metrics and the cluster's log.
fn poll_metrics(
    what: &str,
    api: &str,
    master: &NodeProcess,
    cond: impl Fn(&Samples) -> bool,
) -> (Samples, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (samples, text) = metrics(api, master);
        if cond(&samples) {
            return (samples, text);
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting until {what}; last metrics of {api}:\n{text}\nstderr:\n{}",
            master.log()
        );
        thread::sleep(POLL);
    }
}

/// Polls the master's status until worker-a is online with every worker running.
fn wait_worker_a_running(master: &NodeProcess) {
    poll("worker-a is online with every worker running", || {
        let status = master.status();
        let online = find_node(&status, "worker-a").is_some_and(|n| n["state"] == "running");
        let workers = all_workers(&status);
        online
            && workers.iter().any(|w| w["id"] == "worker-a/chaos/0")
            && workers.iter().all(|w| w["state"] == "running")
    });
}

/// worker-a's API address, from the master's last `listening` line for it.
fn worker_a_api(master: &NodeProcess) -> String {
    let addr = master_events(master, "worker-a")
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("listening (api "))
        .and_then(|rest| rest.split_once(','))
        .map(|(addr, _)| addr.to_string())
        .unwrap_or_else(|| {
            panic!(
                "no `node worker-a: listening (api …)` line; stderr:\n{}",
                master.log()
            )
        });
    assert!(
        addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"),
        "worker-a's API address {addr:?}"
    );
    format!("http://{addr}")
}

/// POSTs `body` to `service`/`subject` on `api`: the status code and body.
fn request(api: &str, service: &str, subject: &str, body: &str) -> (u16, String) {
    http(
        api,
        "POST",
        &format!("/v1/request/{service}/{subject}"),
        body,
    )
    .unwrap_or_else(|e| panic!("POST {service}/{subject} to {api}: {e}"))
}

#[test]
fn metrics_count_requests_errors_restarts_and_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let config = spawning_cluster(
        dir.path(),
        "{ math: { workers: 1 } }",
        &[(
            "worker-a",
            "",
            "{ math: { workers: 1 }, chaos: { workers: 1 } }",
        )],
    );
    let master = NodeProcess::start(&config, &[]);
    wait_worker_a_running(&master);
    let a = worker_a_api(&master);

    // Twelve requests served by worker-a's one chaos worker.
    let kind_of = |body: &str| -> String {
        let v: serde_json::Value =
            serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
        v["error"]["kind"].as_str().unwrap_or_default().to_string()
    };
    for i in 0..ECHOES {
        let body = format!(r#"{{"i":{i}}}"#);
        let (code, reply) = request(&a, "chaos", "echo", &body);
        assert_eq!(
            (code, reply.as_str()),
            (200, format!(r#"{{"reply":{body}}}"#).as_str()),
            "echo {i}; stderr:\n{}",
            master.log()
        );
    }
    for i in 0..PANICS {
        let (code, reply) = request(&a, "chaos", "panic", "{}");
        assert_eq!(
            (code, kind_of(&reply)),
            (500, "HandlerPanicked".to_string()),
            "panic {i}: {reply}; stderr:\n{}",
            master.log()
        );
    }
    for i in 0..UNKNOWN_SUBJECT {
        let (code, reply) = request(&a, "chaos", "nosuchsubject", "{}");
        assert_eq!(
            (code, kind_of(&reply)),
            (400, "BadRequest".to_string()),
            "unknown subject {i}: {reply}"
        );
    }

    // worker-a's metrics. Each panic restarts the worker; the restart comes after
    // the answer, so its count is polled.
    let chaos = [("node", "worker-a"), ("service", "chaos")];
    let (m, text) = poll_metrics(
        "worker-a counts 3 chaos worker restarts",
        &a,
        &master,
        |m| get(m, "colony_worker_restarts_total", &chaos) == Some(PANICS as f64),
    );
    let total = (ECHOES + PANICS + UNKNOWN_SUBJECT) as f64;
    assert_eq!(
        get(&m, "colony_requests_total", &chaos),
        Some(total),
        "{text}"
    );
    let math = [("node", "worker-a"), ("service", "math")];
    assert_eq!(get(&m, "colony_requests_total", &math), Some(0.0), "{text}");
    for kind in KINDS {
        let expected = match kind {
            "HandlerPanicked" => PANICS,
            "BadRequest" => UNKNOWN_SUBJECT,
            _ => 0,
        };
        let labels = [("node", "worker-a"), ("service", "chaos"), ("kind", kind)];
        assert_eq!(
            get(&m, "colony_request_errors_total", &labels),
            Some(expected as f64),
            "errors of kind {kind}:\n{text}"
        );
    }
    let error_samples = m
        .keys()
        .filter(|(name, labels)| {
            name == "colony_request_errors_total"
                && labels.contains(&("service".into(), "chaos".into()))
        })
        .count();
    assert_eq!(error_samples, KINDS.len(), "{text}");
    let histogram = "colony_request_duration_seconds";
    assert_eq!(
        get(&m, &format!("{histogram}_count"), &chaos),
        Some(total),
        "{text}"
    );
    let inf = [("node", "worker-a"), ("service", "chaos"), ("le", "+Inf")];
    assert_eq!(
        get(&m, &format!("{histogram}_bucket"), &inf),
        Some(total),
        "{text}"
    );
    assert!(
        get(&m, &format!("{histogram}_sum"), &chaos).is_some_and(|s| s > 0.0),
        "{text}"
    );
    let node_a = [("node", "worker-a")];
    assert_eq!(
        get(&m, "colony_bridge_peers_up", &node_a),
        Some(1.0),
        "{text}"
    );
    for direction in ["in", "out"] {
        let labels = [("node", "worker-a"), ("direction", direction)];
        assert!(
            get(&m, "colony_bridge_bytes_total", &labels).is_some_and(|b| b > 0.0),
            "bridge bytes {direction}:\n{text}"
        );
    }
    assert!(
        m.keys()
            .all(|(_, labels)| labels.contains(&("node".into(), "worker-a".into()))),
        "a sample without node=\"worker-a\":\n{text}"
    );

    // The master: a call for a service nobody runs fails on the way, once. Its name
    // comes from a URL, so it is counted under "(other)", not as a label of its own.
    let nosuch = [
        ("node", "master"),
        ("service", "(other)"),
        ("kind", "NoSuchService"),
    ];
    let (before, text) = metrics(&master.api, &master);
    assert_eq!(
        get(&before, "colony_call_failures_total", &nosuch),
        None,
        "{text}"
    );
    let (code, reply) = request(&master.api, "nosuch", "x", "{}");
    assert_eq!(
        (code, kind_of(&reply)),
        (404, "NoSuchService".to_string()),
        "{reply}"
    );
    let (m, text) = metrics(&master.api, &master);
    assert_eq!(
        get(&m, "colony_call_failures_total", &nosuch),
        Some(1.0),
        "{text}"
    );
    let failures = m
        .keys()
        .filter(|(name, _)| name == "colony_call_failures_total")
        .count();
    assert_eq!(failures, 1, "{text}");

    // The master's view of worker-a, before and after a SIGKILL.
    let child = [("node", "master"), ("child", "worker-a")];
    assert_eq!(get(&m, "colony_node_online", &child), Some(1.0), "{text}");
    assert_eq!(
        get(&m, "colony_node_restarts_total", &child),
        Some(0.0),
        "{text}"
    );
    let master_node = [("node", "master")];
    let reconnects = get(&m, "colony_bridge_reconnects_total", &master_node)
        .unwrap_or_else(|| panic!("no colony_bridge_reconnects_total:\n{text}"));
    let pid = pid_of(&master.status(), "worker-a");
    assert!(process_alive(pid), "worker-a pid {pid}");
    send_signal(pid, "KILL");
    poll_metrics(
        "the master shows worker-a restarted once and online",
        &master.api,
        &master,
        |m| {
            get(m, "colony_node_restarts_total", &child) == Some(1.0)
                && get(m, "colony_node_online", &child) == Some(1.0)
        },
    );
    assert_ne!(
        node_of(&master.status(), "worker-a")["pid"].as_u64(),
        Some(u64::from(pid)),
        "worker-a still has its old pid"
    );
    let (m, text) = poll_metrics(
        "the master counts worker-a's rejoin as a bridge reconnect",
        &master.api,
        &master,
        |m| get(m, "colony_bridge_reconnects_total", &master_node).is_some_and(|r| r > reconnects),
    );
    assert!(
        get(&m, "colony_bridge_reconnects_total", &master_node).is_some_and(|r| r >= 1.0),
        "{text}"
    );
    // Still exactly one restart: the new process stayed up.
    assert_eq!(
        get(&m, "colony_node_restarts_total", &child),
        Some(1.0),
        "{text}"
    );
    assert_eq!(get(&m, "colony_node_online", &child), Some(1.0), "{text}");
}
