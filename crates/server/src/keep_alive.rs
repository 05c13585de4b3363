//! `keep_alive`, as Ollama spells it (config per model, and a per-request field): how long a
//! model stays loaded after its last request. A number is seconds, a string is a duration
//! (`"30s"`, `"5m"`, `"1h"`, `"1h30m"`); zero unloads it as soon as it is idle; a negative
//! value keeps it loaded for good.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// None: never unload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepAlive(pub Option<Duration>);

impl KeepAlive {
    pub const FOREVER: KeepAlive = KeepAlive(None);

    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if let Ok(n) = t.parse::<f64>() {
            return Self::from_secs(n);
        }
        if t.starts_with('-') {
            return Ok(Self::FOREVER);
        }
        let mut total = 0f64;
        let mut num = String::new();
        let mut rest = t;
        while !rest.is_empty() {
            let c = rest.chars().next().unwrap_or(' ');
            if c.is_ascii_digit() || c == '.' {
                num.push(c);
                rest = &rest[1..];
                continue;
            }
            let (unit, scale) = [("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)]
                .into_iter()
                .find(|(u, _)| rest.starts_with(u) && !(*u == "m" && rest.starts_with("ms")))
                .ok_or_else(|| format!("`{s}` is not a duration (use seconds, or e.g. \"30s\", \"5m\", \"1h\")"))?;
            let v: f64 = num.parse().map_err(|_| format!("`{s}` is not a duration"))?;
            total += v * scale;
            num.clear();
            rest = &rest[unit.len()..];
        }
        if !num.is_empty() {
            return Err(format!("`{s}`: a number needs a unit (s, m, h)"));
        }
        Self::from_secs(total)
    }

    fn from_secs(n: f64) -> Result<Self, String> {
        if !n.is_finite() {
            return Err("keep_alive must be finite".into());
        }
        if n < 0.0 {
            return Ok(Self::FOREVER);
        }
        Ok(Self(Some(Duration::from_secs_f64(n.min(1e12)))))
    }
}

impl<'de> Deserialize<'de> for KeepAlive {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(f64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(n) => KeepAlive::from_secs(n),
            Raw::Str(s) => KeepAlive::parse(&s),
        }
        .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ollama_spellings() {
        let secs = |s: &str| KeepAlive::parse(s).unwrap().0.map(|d| d.as_secs_f64());
        assert_eq!(secs("5m"), Some(300.0));
        assert_eq!(secs("1h30m"), Some(5400.0));
        assert_eq!(secs("2.5s"), Some(2.5));
        assert_eq!(secs("250ms"), Some(0.25));
        assert_eq!(secs("0"), Some(0.0));
        assert_eq!(secs("-1"), None);
        assert_eq!(secs("-1m"), None);
        assert!(KeepAlive::parse("5 minutes").is_err());
        assert!(KeepAlive::parse("5").is_ok());
        assert!(KeepAlive::parse("10x").is_err());
        let k: KeepAlive = serde_json::from_str("30").unwrap();
        assert_eq!(k, KeepAlive(Some(Duration::from_secs(30))));
        let k: KeepAlive = serde_json::from_str("-1").unwrap();
        assert_eq!(k, KeepAlive::FOREVER);
        assert!(serde_json::from_str::<KeepAlive>("\"soon\"").is_err());
    }
}
