//! What a config file may be before it is parsed, and how integers are read.
//!
//! The `config` crate's YAML loader expands aliases by copying and recurses once
//! per nesting level, so a small file can ask for gigabytes (an alias bomb) or a
//! deep stack. [`check_yaml`] walks the parser's events first, without building
//! anything, and refuses a file whose expansion or nesting passes a bound. And
//! the `config` crate rounds `1.5` to `2` when asked for an integer, so integer
//! keys are read with [`integer`], which refuses anything but a whole number.

use serde::de::{self, Deserializer, Visitor};
use yaml_rust2::parser::{Event, Parser};

/// Largest config file read, in bytes.
pub(crate) const MAX_FILE: usize = 1024 * 1024;
/// Most YAML nodes (scalars, sequences, mappings) a file may expand to, aliases
/// counted at their full size.
pub(crate) const MAX_NODES: u64 = 1_000_000;
/// Deepest nesting of sequences and mappings.
pub(crate) const MAX_DEPTH: usize = 64;

/// Refuses YAML `text` that is too big, expands past [`MAX_NODES`] or nests past
/// [`MAX_DEPTH`]. Syntax errors are left to the real parse, which names them.
pub(crate) fn check_yaml(text: &str) -> Result<(), String> {
    if text.len() > MAX_FILE {
        return Err(format!(
            "is {} bytes; a config may be at most {MAX_FILE}",
            text.len()
        ));
    }
    let mut parser = Parser::new_from_str(text);
    // Expanded size of each anchor, by anchor id.
    let mut anchors: std::collections::HashMap<usize, u64> = Default::default();
    // Open collections: their anchor and the node count when they opened.
    let mut open: Vec<(usize, u64)> = Vec::new();
    let mut nodes: u64 = 0;
    loop {
        let Ok((event, _)) = parser.next_token() else {
            return Ok(());
        };
        match event {
            Event::StreamEnd => return Ok(()),
            Event::Scalar(_, _, anchor, _) => {
                nodes = nodes.saturating_add(1);
                if anchor > 0 {
                    anchors.insert(anchor, 1);
                }
            }
            Event::Alias(anchor) => {
                nodes = nodes.saturating_add(anchors.get(&anchor).copied().unwrap_or(1));
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                nodes = nodes.saturating_add(1);
                open.push((anchor, nodes));
                if open.len() > MAX_DEPTH {
                    return Err(format!("nests deeper than {MAX_DEPTH} levels"));
                }
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((anchor, start)) = open.pop() {
                    if anchor > 0 {
                        anchors.insert(anchor, nodes.saturating_sub(start).saturating_add(1));
                    }
                }
            }
            _ => {}
        }
        if nodes > MAX_NODES {
            return Err(format!(
                "expands to more than {MAX_NODES} values (YAML aliases); refused"
            ));
        }
    }
}

struct Integer;

impl Visitor<'_> for Integer {
    type Value = u64;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a whole number")
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        Ok(v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        u64::try_from(v).map_err(|_| E::custom(format!("{v} is negative; expected a whole number")))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<u64, E> {
        u64::try_from(v).map_err(|_| E::custom(format!("{v} is too large")))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<u64, E> {
        u64::try_from(v).map_err(|_| E::custom(format!("{v} is out of range")))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<u64, E> {
        // YAML reads an integer past u64 as a float: say what is wrong with it.
        if v.is_finite() && v.fract() == 0.0 && v.abs() >= u64::MAX as f64 {
            return Err(E::custom(format!(
                "{v:e} is too large; the most any number may be is {}",
                u64::MAX
            )));
        }
        Err(E::custom(format!("{v:?} is not a whole number")))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
        let shown = crate::logging::untrusted(v);
        Err(E::custom(match v.trim().parse::<u128>() {
            Ok(n) if n > u128::from(u64::MAX) => format!("{shown} is too large"),
            Ok(_) => format!("\"{shown}\" is text, not a number: write it without quotes"),
            Err(_) => format!("`{shown}` is not a whole number"),
        }))
    }
}

fn whole<'de, D: Deserializer<'de>, T: TryFrom<u64>>(d: D) -> Result<T, D::Error> {
    let v = d.deserialize_any(Integer)?;
    T::try_from(v).map_err(|_| de::Error::custom(format!("{v} is too large")))
}

/// Reads a whole, non-negative number: `1.5`, `-1` and `"x"` are errors, never rounded.
pub(crate) fn integer<'de, D: Deserializer<'de>, T: TryFrom<u64>>(d: D) -> Result<T, D::Error> {
    whole(d)
}

/// [`integer`] for an optional key.
pub(crate) fn optional_integer<'de, D: Deserializer<'de>, T: TryFrom<u64>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    whole(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alias_bomb_is_refused_before_it_expands() {
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..9 {
            let prev = (b'a' + i - 1) as char;
            let name = (b'a' + i) as char;
            bomb.push_str(&format!(
                "{name}: &{name} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
            ));
        }
        let error = check_yaml(&bomb).unwrap_err();
        assert!(error.contains("aliases"), "{error}");
    }

    #[test]
    fn ordinary_files_and_small_aliases_pass_and_deep_nesting_does_not() {
        assert_eq!(check_yaml("a: &x {b: 1}\nc: *x\nd: [1, 2]\n"), Ok(()));
        let deep = format!("a: {}{}", "[".repeat(100), "]".repeat(100));
        assert!(check_yaml(&deep).unwrap_err().contains("deeper"));
    }
}
