//! `Rate`: "requests per period" as written in config (`100/min`), parsed strictly.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Largest accepted count; beyond this the emission interval drops below 1 ns/s.
pub const MAX_COUNT: u32 = 1_000_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rate {
    pub count: u32,
    pub period: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid rate {input:?}: {reason} (expected N/s, N/min, N/hour or N/day with 1 <= N <= 1000000000, e.g. \"100/min\")")]
pub struct RateParseError {
    input: String,
    reason: &'static str,
}

impl Rate {
    /// Time between two requests at the steady rate: period / count, truncated to whole
    /// nanoseconds (at most 1 ns too short, i.e. slightly permissive, never stricter).
    pub fn emission_interval(&self) -> Duration {
        self.period / self.count.max(1)
    }

    /// Relative error of `emission_interval()` against the exact period / count; used by
    /// config validation to refuse rates we cannot hold within 1 %.
    pub fn interval_error(&self) -> f64 {
        let exact = self.period.as_nanos() as f64 / f64::from(self.count.max(1));
        let got = self.emission_interval().as_nanos().max(1) as f64;
        (exact - got).abs() / exact
    }
}

impl FromStr for Rate {
    type Err = RateParseError;

    fn from_str(input: &str) -> Result<Rate, RateParseError> {
        let err = |reason| RateParseError {
            input: input.to_owned(),
            reason,
        };
        // YAML already strips unquoted whitespace; anything else inside is a typo.
        let s = input.trim();
        if s.is_empty() {
            return Err(err("empty"));
        }
        let (count, unit) = s.split_once('/').ok_or_else(|| err("missing '/'"))?;
        if count.is_empty() {
            return Err(err("missing count before '/'"));
        }
        // ASCII digits only: no sign, no decimal point, no exponent, no Unicode digits.
        if !count.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err("count must be a whole number of ASCII digits"));
        }
        // Length check first so huge inputs cannot overflow the parse.
        let n: u64 = if count.len() > 10 {
            u64::MAX
        } else {
            count.parse().map_err(|_| err("count is not a number"))?
        };
        if n == 0 {
            return Err(err("count must be at least 1"));
        }
        if n > u64::from(MAX_COUNT) {
            return Err(err("count is larger than 1000000000"));
        }
        let secs = match unit {
            "s" | "sec" | "second" => 1,
            "m" | "min" | "minute" => 60,
            "h" | "hour" => 3_600,
            "d" | "day" => 86_400,
            "" => return Err(err("missing unit after '/'")),
            _ => return Err(err("unknown unit")),
        };
        Ok(Rate {
            count: n as u32,
            period: Duration::from_secs(secs),
        })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.period.as_secs() {
            1 => write!(f, "{}/s", self.count),
            60 => write!(f, "{}/min", self.count),
            3_600 => write!(f, "{}/hour", self.count),
            86_400 => write!(f, "{}/day", self.count),
            _ => write!(f, "{}/{:?}", self.count, self.period),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Rate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Rate, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Rate;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a rate string such as \"100/min\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Rate, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_good_rates() {
        // (count, seconds per period, spellings)
        #[rustfmt::skip]
        let cases: &[(u32, u64, &[&str])] = &[
            (1, 1, &["1/s"]), (100, 1, &["100/sec"]), (5, 1, &["5/second"]),
            (100, 60, &["100/m", "100/min", " 100/min "]), (7, 60, &["7/minute"]),
            (10, 3_600, &["10/h", "10/hour"]),
            (1, 86_400, &["1/d"]), (1000, 86_400, &["1000/day"]),
            (1_000_000_000, 1, &["1000000000/s"]), (10, 1, &["010/s"]),
        ];
        for (input, count, secs) in cases
            .iter()
            .flat_map(|&(count, secs, spellings)| spellings.iter().map(move |s| (*s, count, secs)))
        {
            let r: Rate = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.count, count, "{input}");
            assert_eq!(r.period, Duration::from_secs(secs), "{input}");
        }
    }

    #[test]
    fn rejects_hostile_rates() {
        // (what the message says, inputs)
        #[rustfmt::skip]
        let cases: &[(&str, &[&str])] = &[
            ("ASCII digits", &["-1/s", "+1/s", "1.5/s", "1e3/s", "１０/s", "10 /s"]),
            ("unknown unit", &["10/fortnight", "10/ｓ", "10/MIN", "10/s/s", "10/ s"]),
            ("larger than", &["99999999999/s", "1000000001/s", "18446744073709551616/s"]),
            ("empty", &["", "   ", "\t\n"]),
            ("at least 1", &["0/min"]), ("missing count", &["/s"]), ("missing unit", &["10/"]),
            ("missing '/'", &["10"]),
        ];
        for (input, want) in cases
            .iter()
            .flat_map(|&(want, inputs)| inputs.iter().map(move |i| (*i, want)))
        {
            let e = input.parse::<Rate>().expect_err(input).to_string();
            assert!(e.contains(want), "{input:?}: {e}");
            assert!(e.contains("expected N/s"), "message explains format: {e}");
        }
    }

    #[test]
    fn emission_interval_is_period_over_count() {
        let r: Rate = "100/min".parse().unwrap();
        assert_eq!(r.emission_interval(), Duration::from_millis(600));
        let r: Rate = "3/s".parse().unwrap();
        assert_eq!(r.emission_interval(), Duration::from_nanos(333_333_333));
        assert!(r.interval_error() < 1e-8);
        let r: Rate = "1000000000/s".parse().unwrap();
        assert_eq!(r.emission_interval(), Duration::from_nanos(1));
        assert_eq!(r.interval_error(), 0.0);
        let r: Rate = "700000000/s".parse().unwrap();
        assert!(r.interval_error() > 0.01);
    }

    #[test]
    fn deserializes_from_yaml_string_only() {
        let r: Rate = serde_yaml::from_str("100/min").unwrap();
        assert_eq!(r.count, 100);
        let e = serde_yaml::from_str::<Rate>("100").unwrap_err().to_string();
        assert!(e.contains("missing '/'"), "{e}");
        let e = serde_yaml::from_str::<Rate>("[100, min]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("rate string"), "{e}");
        let e = serde_yaml::from_str::<Rate>("0/s").unwrap_err().to_string();
        assert!(e.contains("at least 1"), "{e}");
    }
}
