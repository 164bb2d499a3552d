//! Host-specific values out of a recorded answer: certificates, fingerprints, ids, MAC
//! addresses and host names become stable placeholders of the same JSON type; every key
//! stays. The same value gets the same placeholder in every file of one recording.

use std::collections::BTreeMap;

use serde_json::Value;

/// Keys whose string value names this host.
const HOST_KEYS: [&str; 4] = ["server_name", "hostname", "serial", "firmware_version"];

pub(crate) struct Scrubber {
    /// The recorder's own names (`rec-<pid>`) and what they become.
    names: Vec<(String, String)>,
    seen: BTreeMap<String, String>,
}

impl Scrubber {
    pub(crate) fn new(names: Vec<(String, String)>) -> Scrubber {
        Scrubber {
            names,
            seen: BTreeMap::new(),
        }
    }

    pub(crate) fn value(&mut self, v: Value) -> Value {
        self.walk(None, v)
    }

    fn walk(&mut self, key: Option<&str>, v: Value) -> Value {
        match v {
            Value::String(s) => Value::String(self.string(key, s)),
            Value::Array(a) => Value::Array(a.into_iter().map(|x| self.walk(key, x)).collect()),
            Value::Object(o) => Value::Object(
                o.into_iter()
                    .map(|(k, x)| {
                        let k2 = self.names(k.clone());
                        let x = self.walk(Some(&k), x);
                        (k2, x)
                    })
                    .collect(),
            ),
            other => other,
        }
    }

    fn names(&self, mut s: String) -> String {
        for (from, to) in &self.names {
            s = s.replace(from.as_str(), to);
        }
        s
    }

    fn string(&mut self, key: Option<&str>, s: String) -> String {
        if s.contains("-----BEGIN") {
            return "<certificate>".into();
        }
        if key.is_some_and(|k| HOST_KEYS.contains(&k)) && !s.is_empty() {
            return "<host>".into();
        }
        let s = self.names(s);
        let mut out = String::with_capacity(s.len());
        for (i, word) in s.split(['/', '?', '=', '"', ' ', '&']).enumerate() {
            if i > 0 {
                // Put back the separator this word followed.
                let at = out.len();
                out.push(s.as_bytes()[at] as char);
            }
            out.push_str(&self.word(word));
        }
        out
    }

    /// One token: a SHA-256 hex, a UUID or a MAC address becomes a numbered placeholder of
    /// the same form.
    fn word(&mut self, w: &str) -> String {
        let form = if w.len() == 64 && w.bytes().all(|b| b.is_ascii_hexdigit()) {
            Some(64)
        } else if is_uuid(w) {
            Some(36)
        } else if is_mac(w) {
            Some(17)
        } else {
            None
        };
        let Some(form) = form else {
            return w.to_string();
        };
        let n = self.seen.len() + 1;
        self.seen
            .entry(w.to_string())
            .or_insert_with(|| match form {
                64 => format!("{n:064x}"),
                36 => format!("00000000-0000-4000-8000-{n:012x}"),
                _ => format!("00:16:3e:00:00:{:02x}", n % 256),
            })
            .clone()
    }
}

fn is_uuid(w: &str) -> bool {
    let parts: Vec<&str> = w.split('-').collect();
    parts.len() == 5
        && [8, 4, 4, 4, 12]
            .iter()
            .zip(&parts)
            .all(|(n, p)| p.len() == *n && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn is_mac(w: &str) -> bool {
    let parts: Vec<&str> = w.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn same_value_same_placeholder_and_keys_kept() {
        let fp = "a".repeat(64);
        let mut s = Scrubber::new(vec![("rec-42".into(), "rec".into())]);
        let v = s.value(
            json!({"fingerprint": fp, "operation": format!("/1.0/images/{fp}?project=rec-42"),
            "server_name": "myhost", "n": 3, "rec-42": "x"}),
        );
        assert_eq!(v["fingerprint"], format!("{:064x}", 1));
        assert_eq!(
            v["operation"],
            format!("/1.0/images/{:064x}?project=rec", 1)
        );
        assert_eq!(v["server_name"], "<host>");
        assert_eq!(v["n"], 3);
        assert_eq!(v["rec"], "x");
    }
}
