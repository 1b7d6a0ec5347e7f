//! The names a config may choose from (`role`, `restart.policy`, …): each refused
//! with the list of what it may be, and `cpu`, a number or `auto`.

use serde::Deserialize;

use super::{Cpu, Policy, Role, Routing, Strategy};

impl<'de> Deserialize<'de> for Role {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = String::deserialize(d)?;
        match value.as_str() {
            "master" => Ok(Role::Master),
            "worker" => Ok(Role::Worker),
            other => Err(serde::de::Error::unknown_variant(
                other,
                &["master", "worker"],
            )),
        }
    }
}

impl<'de> Deserialize<'de> for Cpu {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct CpuVisitor;
        impl serde::de::Visitor<'_> for CpuVisitor {
            type Value = Cpu;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a CPU number or auto")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Cpu, E> {
                usize::try_from(v)
                    .map(Cpu::Index)
                    .map_err(|_| E::custom(format!("CPU {v} is out of range")))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Cpu, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(format!("CPU {v} is negative")))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Cpu, E> {
                match v {
                    "auto" => Ok(Cpu::Auto),
                    other => other
                        .parse::<u64>()
                        .map_err(|_| E::custom(format!("`{other}` is not a CPU number or auto")))
                        .and_then(|v| self.visit_u64(v)),
                }
            }
        }
        d.deserialize_any(CpuVisitor)
    }
}

impl<'de> Deserialize<'de> for Policy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = String::deserialize(d)?;
        match value.as_str() {
            "permanent" => Ok(Policy::Permanent),
            "transient" => Ok(Policy::Transient),
            "temporary" => Ok(Policy::Temporary),
            other => Err(serde::de::Error::unknown_variant(
                other,
                &["permanent", "transient", "temporary"],
            )),
        }
    }
}

impl<'de> Deserialize<'de> for Strategy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = String::deserialize(d)?;
        match value.as_str() {
            "one_for_one" => Ok(Strategy::OneForOne),
            "one_for_all" => Ok(Strategy::OneForAll),
            "rest_for_one" => Ok(Strategy::RestForOne),
            other => Err(serde::de::Error::unknown_variant(
                other,
                &["one_for_one", "one_for_all", "rest_for_one"],
            )),
        }
    }
}

impl<'de> Deserialize<'de> for Routing {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = String::deserialize(d)?;
        match value.as_str() {
            "local_first" => Ok(Routing::LocalFirst),
            "round_robin" => Ok(Routing::RoundRobin),
            "least_loaded" => Ok(Routing::LeastLoaded),
            other => Err(serde::de::Error::unknown_variant(
                other,
                &["local_first", "round_robin", "least_loaded"],
            )),
        }
    }
}
