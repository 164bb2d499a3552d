//! What the server wiring set on the server for this project. Server config keys and
//! trusted certificates carry no marker of their own, so atlas records here what it set
//! before setting it: a key whose current value is not the recorded one is the operator's.

use std::collections::{BTreeMap, BTreeSet};

use super::keys;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WiringRecords {
    /// Server config keys atlas set, with the value it set ([`keys::SERVER_KEYS`]).
    pub keys: BTreeMap<String, String>,
    /// Fingerprints of the certificates atlas trusted ([`keys::METRICS_CERTS`]).
    pub certs: BTreeSet<String>,
    /// Keys atlas set to a value the server keeps only as its default
    /// ([`keys::SERVER_DEFAULTS`]).
    pub defaults: BTreeSet<String>,
}

impl WiringRecords {
    /// From a project's config map. A garbled record is treated as "atlas set nothing": it
    /// then only leaves things alone.
    pub fn from_config(config: &BTreeMap<String, String>) -> WiringRecords {
        let keys = config
            .get(keys::SERVER_KEYS)
            .and_then(|v| serde_json::from_str::<BTreeMap<String, String>>(v).ok())
            .unwrap_or_default();
        let list = |key: &str| -> BTreeSet<String> {
            config
                .get(key)
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        WiringRecords {
            keys,
            certs: list(keys::METRICS_CERTS),
            defaults: list(keys::SERVER_DEFAULTS),
        }
    }

    /// Whether `key` counts as holding atlas' `value` although the server shows it unset.
    pub fn defaulted(&self, key: &str, value: &str) -> bool {
        self.defaults.contains(key) && self.keys.get(key).map(String::as_str) == Some(value)
    }

    /// These records in `config` (keys dropped when empty).
    pub fn write_into(&self, config: &mut BTreeMap<String, String>) {
        if self.keys.is_empty() {
            config.remove(keys::SERVER_KEYS);
        } else {
            let json = serde_json::to_string(&self.keys).unwrap_or_default();
            config.insert(keys::SERVER_KEYS.to_string(), json);
        }
        let mut list = |key: &str, set: &BTreeSet<String>| {
            if set.is_empty() {
                config.remove(key);
            } else {
                config.insert(
                    key.to_string(),
                    set.iter().cloned().collect::<Vec<_>>().join(","),
                );
            }
        };
        list(keys::METRICS_CERTS, &self.certs);
        list(keys::SERVER_DEFAULTS, &self.defaults);
    }
}
