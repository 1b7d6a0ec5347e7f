//! The names a config may choose from (`role`, `restart.policy`, …): each refused
//! with the list of what it may be, and `cpu`, a number or `auto`.

use serde::{Deserialize, Deserializer};

use super::{Cpu, Policy, Role, Routing, StateMode, Strategy};

/// Reads one of `names`, as the value at the same place in `values`; any other
/// text is refused with the list of names.
fn one_of<'de, D: Deserializer<'de>, T: Copy>(
    d: D,
    names: &'static [&'static str],
    values: &[T],
) -> Result<T, D::Error> {
    let value = String::deserialize(d)?;
    names
        .iter()
        .zip(values)
        .find(|(name, _)| **name == value)
        .map(|(_, v)| *v)
        .ok_or_else(|| serde::de::Error::unknown_variant(&value, names))
}

impl<'de> Deserialize<'de> for Role {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        one_of(d, &["master", "worker"], &[Role::Master, Role::Worker])
    }
}

impl<'de> Deserialize<'de> for StateMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        one_of(
            d,
            &["durable", "memory"],
            &[StateMode::Durable, StateMode::Memory],
        )
    }
}

impl<'de> Deserialize<'de> for Cpu {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
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
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        one_of(
            d,
            &["permanent", "transient", "temporary"],
            &[Policy::Permanent, Policy::Transient, Policy::Temporary],
        )
    }
}

impl<'de> Deserialize<'de> for Strategy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        one_of(
            d,
            &["one_for_one", "one_for_all", "rest_for_one"],
            &[
                Strategy::OneForOne,
                Strategy::OneForAll,
                Strategy::RestForOne,
            ],
        )
    }
}

impl<'de> Deserialize<'de> for Routing {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        one_of(
            d,
            &["local_first", "round_robin", "least_loaded"],
            &[
                Routing::LocalFirst,
                Routing::RoundRobin,
                Routing::LeastLoaded,
            ],
        )
    }
}
