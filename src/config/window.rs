//! Budget and rate-limit windows as written in the config: `30s 1m 5m 1h 1d 1w 1M 1Q 1Y`.
//! Only the names and their nominal lengths; calendar alignment lives in governance.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Window {
    Seconds30,
    Minute,
    Minutes5,
    Hour,
    Day,
    Week,
    Month,
    Quarter,
    Year,
}

impl Window {
    pub const ALL: [&'static str; 9] = ["30s", "1m", "5m", "1h", "1d", "1w", "1M", "1Q", "1Y"];

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "30s" => Self::Seconds30,
            "1m" => Self::Minute,
            "5m" => Self::Minutes5,
            "1h" => Self::Hour,
            "1d" => Self::Day,
            "1w" => Self::Week,
            "1M" => Self::Month,
            "1Q" => Self::Quarter,
            "1Y" => Self::Year,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Seconds30 => "30s",
            Self::Minute => "1m",
            Self::Minutes5 => "5m",
            Self::Hour => "1h",
            Self::Day => "1d",
            Self::Week => "1w",
            Self::Month => "1M",
            Self::Quarter => "1Q",
            Self::Year => "1Y",
        }
    }
}

impl<'de> Deserialize<'de> for Window {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Window::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!("invalid window `{s}`, expected one of {}", Window::ALL.join(", ")))
        })
    }
}

impl Serialize for Window {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}
