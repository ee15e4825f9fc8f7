//! Topic patterns that name a device: `devices/{device_id}/telemetry` takes the device id from
//! the second level of a topic whose other levels are `devices` and `telemetry`; `+` matches
//! any one level and a final `#` any rest, as in MQTT filters.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Exact(String),
    Device,
    Any,
    Rest,
}

/// A parsed `device_from_topic` pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPattern {
    levels: Vec<Level>,
}

/// Why a pattern does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternError(String);

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PatternError {}

impl TopicPattern {
    /// Parses `pattern`: exactly one level is `{device_id}`.
    pub fn parse(pattern: &str) -> Result<TopicPattern, PatternError> {
        let parts: Vec<&str> = pattern.split('/').collect();
        let mut levels = Vec::with_capacity(parts.len());
        for (i, p) in parts.iter().enumerate() {
            levels.push(match *p {
                "{device_id}" => Level::Device,
                "+" => Level::Any,
                "#" if i + 1 == parts.len() => Level::Rest,
                p if p.contains(['{', '}', '+', '#']) => {
                    return Err(PatternError(format!(
                        "device_from_topic {pattern:?}: level {p:?} must be a name, +, a final #, or {{device_id}} alone"
                    )))
                }
                p => Level::Exact(p.to_string()),
            });
        }
        match levels.iter().filter(|l| **l == Level::Device).count() {
            1 => Ok(TopicPattern { levels }),
            n => Err(PatternError(format!(
                "device_from_topic {pattern:?} names {{device_id}} {n} times: it must name it once, as a whole level"
            ))),
        }
    }

    /// The device id `topic` names, when it matches.
    pub fn device<'t>(&self, topic: &'t str) -> Option<&'t str> {
        let mut device = None;
        let mut parts = topic.split('/');
        for l in &self.levels {
            match l {
                Level::Rest => return device,
                _ => {
                    let p = parts.next()?;
                    match l {
                        Level::Exact(e) if e != p => return None,
                        Level::Device if p.is_empty() => return None,
                        Level::Device => device = Some(p),
                        _ => {}
                    }
                }
            }
        }
        parts.next().is_none().then_some(device).flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_the_device_from_its_level_only_when_the_rest_matches() {
        let p = TopicPattern::parse("devices/{device_id}/telemetry").unwrap();
        assert_eq!(p.device("devices/d-1/telemetry"), Some("d-1"));
        assert_eq!(p.device("devices/d-1/status"), None);
        assert_eq!(p.device("devices/d-1/telemetry/x"), None);
        assert_eq!(p.device("devices//telemetry"), None);
        assert_eq!(p.device("devices/d-1"), None);
        let p = TopicPattern::parse("+/site/{device_id}/#").unwrap();
        assert_eq!(p.device("a/site/d-2/x/y"), Some("d-2"));
        assert_eq!(p.device("a/site/d-2"), Some("d-2"));
        assert_eq!(p.device("a/other/d-2/x"), None);
    }

    #[test]
    fn refuses_patterns_without_one_whole_device_level() {
        for bad in [
            "devices/telemetry",
            "devices/{device_id}/{device_id}",
            "devices/x{device_id}/t",
            "devices/#/{device_id}",
        ] {
            let e = TopicPattern::parse(bad).unwrap_err();
            assert!(e.to_string().contains("device_from_topic"), "{bad}: {e}");
        }
    }
}
