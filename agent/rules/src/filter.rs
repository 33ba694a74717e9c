//! MQTT topic filters (`plant/+/temp`, `plant/#`), MQTT 3.1.1 §4.7.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Exact(Box<str>),
    /// `+`: exactly one level.
    One,
    /// `#`: this level and all below (also none: `a/#` matches `a`).
    Rest,
}

ferry_core::message_error! {
    /// A topic filter that is not valid MQTT filter syntax.
    FilterError
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicFilter {
    text: Box<str>,
    levels: Vec<Level>,
}

impl TopicFilter {
    pub fn parse(text: &str) -> Result<TopicFilter, FilterError> {
        if text.is_empty() {
            return Err("a topic filter must not be empty".into());
        }
        let parts: Vec<&str> = text.split('/').collect();
        let mut levels = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let level = match *part {
                "#" if i + 1 == parts.len() => Level::Rest,
                "#" => return Err(format!("`#` must be the last level in {text:?}").into()),
                "+" => Level::One,
                p if p.contains(['#', '+']) => {
                    return Err(
                        format!("`+` and `#` must stand alone in a level, in {text:?}").into(),
                    );
                }
                p => Level::Exact(p.into()),
            };
            levels.push(level);
        }
        Ok(TopicFilter {
            text: text.into(),
            levels,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn matches(&self, topic: &str) -> bool {
        // §4.7.2: a filter starting with a wildcard does not match topics
        // starting with `$` (broker-internal topics such as `$SYS/...`).
        if topic.starts_with('$') && !matches!(self.levels.first(), Some(Level::Exact(_))) {
            return false;
        }
        let mut parts = topic.split('/');
        for level in &self.levels {
            match level {
                Level::Rest => return true,
                Level::One => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                Level::Exact(want) => match parts.next() {
                    Some(p) if p == &**want => {}
                    _ => return false,
                },
            }
        }
        parts.next().is_none()
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(filter: &str, topic: &str) -> bool {
        TopicFilter::parse(filter)
            .map(|f| f.matches(topic))
            .unwrap_or(false)
    }

    #[test]
    fn wildcards_follow_the_mqtt_spec() {
        assert!(m("plant/+/temp", "plant/7/temp"));
        assert!(!m("plant/+/temp", "plant/7/8/temp"));
        assert!(!m("plant/+/temp", "plant/temp"));
        assert!(m("plant/#", "plant"));
        assert!(m("plant/#", "plant/7/temp"));
        assert!(m("#", "a/b"));
        assert!(!m("#", "$SYS/uptime"));
        assert!(m("$SYS/#", "$SYS/uptime"));
        assert!(m("+/+", "/x"));
        assert!(!m("a/b", "a/b/"));
        assert!(TopicFilter::parse("a/#/b").is_err());
        assert!(TopicFilter::parse("a/b+").is_err());
        assert!(TopicFilter::parse("").is_err());
    }
}
