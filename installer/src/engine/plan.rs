//! The diff between what should exist ([`Resource`]s) and what Incus holds ([`Observed`]),
//! in the fixed step order. Pure: reading Incus and applying the plan live elsewhere.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;

use super::resource::{Observed, Resource, ResourceAddress, ResourceKind};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "change", rename_all = "kebab-case")]
pub enum Change {
    Create,
    /// Owned, but its content hash differs from the desired one.
    Update,
    Unchanged,
    /// Owned by atlas, no longer in the config.
    Delete,
    /// Owned data volume no longer in the config: kept, never deleted implicitly.
    KeepData,
    /// A same-named object atlas does not own: an error, nothing is touched.
    Conflict,
}

#[derive(Debug, Clone, Serialize)]
pub struct Action {
    pub address: ResourceAddress,
    #[serde(flatten)]
    pub change: Change,
    /// The desired object, absent for deletions.
    #[serde(skip)]
    pub resource: Option<Resource>,
    /// For a conflict with an object atlas-install manages for another Atlas project: that
    /// project (its install uses the object).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

impl Action {
    /// A conflict in words: whose the object is, and what to do about it.
    pub fn conflict_detail(&self) -> String {
        match &self.owner {
            Some(p) => format!(
                "{} (atlas-install manages it for the Atlas project {p}, whose install uses it: leave it, and give this install other names in atlas.toml)",
                self.address
            ),
            None => unmanaged(&self.address),
        }
    }
}

/// An object in the way that atlas-install does not manage, in words.
fn unmanaged(address: &ResourceAddress) -> String {
    format!(
        "{address} (exists but is not managed by atlas-install: no user.atlas.managed key; rename or remove it, or choose another name in atlas.toml)"
    )
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Plan {
    pub actions: Vec<Action>,
}

impl Plan {
    /// Whether applying the plan would write anything.
    pub fn has_changes(&self) -> bool {
        self.actions
            .iter()
            .any(|a| matches!(a.change, Change::Create | Change::Update | Change::Delete))
    }

    /// The addresses (`instance caddy01`) of every action that is not `Unchanged`.
    pub fn changed(&self) -> Vec<String> {
        self.actions
            .iter()
            .filter(|a| a.change != Change::Unchanged)
            .map(|a| a.address.to_string())
            .collect()
    }

    pub fn conflicts(&self) -> impl Iterator<Item = &Action> {
        self.actions.iter().filter(|a| a.change == Change::Conflict)
    }

    /// Every conflict in words, whose the object is and what to do about it: the one form
    /// `plan`, `install` and apply report them in ([`super::EngineError::Conflicts`]).
    pub fn conflict_details(&self) -> Vec<String> {
        self.conflicts().map(Action::conflict_detail).collect()
    }

    /// Counts per change kind, for the one-line summary.
    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        let mut m = BTreeMap::new();
        for a in &self.actions {
            *m.entry(change_word(&a.change)).or_insert(0) += 1;
        }
        m
    }
}

fn change_word(c: &Change) -> &'static str {
    match c {
        Change::Create => "create",
        Change::Update => "update",
        Change::Unchanged => "unchanged",
        Change::Delete => "delete",
        Change::KeepData => "keep",
        Change::Conflict => "conflict",
    }
}

/// Diffs desired against observed. `observed` must hold an entry for every desired address;
/// `owned_elsewhere` lists owned objects found in Incus that the config no longer names.
pub fn diff(
    desired: &[Resource],
    observed: &BTreeMap<ResourceAddress, Observed>,
    owned_elsewhere: &[ResourceAddress],
) -> Plan {
    let mut actions: Vec<Action> = desired
        .iter()
        .map(|r| {
            let seen = observed.get(&r.address()).unwrap_or(&Observed::Absent);
            let change = match seen {
                Observed::Absent => Change::Create,
                Observed::Foreign | Observed::OtherProject { .. } => Change::Conflict,
                Observed::Owned { hash, .. } if hash.as_deref() == Some(r.hash.as_str()) => {
                    Change::Unchanged
                }
                Observed::Owned { .. } => Change::Update,
            };
            Action {
                address: r.address(),
                change,
                resource: Some(r.clone()),
                owner: match seen {
                    Observed::OtherProject { project } => Some(project.clone()),
                    _ => None,
                },
            }
        })
        .collect();
    let wanted: BTreeSet<_> = desired.iter().map(Resource::address).collect();
    for addr in owned_elsewhere.iter().filter(|a| !wanted.contains(*a)) {
        let change = if addr.kind == ResourceKind::Volume {
            Change::KeepData
        } else {
            Change::Delete
        };
        actions.push(Action {
            address: addr.clone(),
            change,
            resource: None,
            owner: None,
        });
    }
    // Creations and updates run in step order; deletions run after, in reverse step order,
    // so an instance goes before the profile and network it uses.
    actions.sort_by_key(|a| {
        let removing = matches!(a.change, Change::Delete | Change::KeepData);
        let order = a.address.kind as i32;
        (removing, if removing { -order } else { order })
    });
    Plan { actions }
}

impl fmt::Display for Plan {
    /// Human plan: one line per object that changes, then a summary. Secrets never appear:
    /// only addresses and change kinds are printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for a in &self.actions {
            let sign = match a.change {
                Change::Create => "+",
                Change::Update => "~",
                Change::Delete => "-",
                Change::KeepData => "=",
                Change::Conflict => "!",
                Change::Unchanged => continue,
            };
            let note = match a.change {
                Change::KeepData => {
                    " (data volume no longer configured: kept; remove it by hand if unwanted)"
                }
                _ => "",
            };
            if a.change == Change::Conflict {
                writeln!(f, "  {sign} {}", a.conflict_detail())?;
                continue;
            }
            writeln!(f, "  {sign} {}{note}", a.address)?;
        }
        if !self.has_changes() && self.conflicts().next().is_none() {
            return writeln!(f, "No changes. The installation matches the configuration.");
        }
        let counts = self.counts();
        let parts: Vec<String> = [
            "create",
            "update",
            "delete",
            "keep",
            "conflict",
            "unchanged",
        ]
        .iter()
        .filter_map(|k| counts.get(k).map(|n| format!("{n} to {k}")))
        .collect();
        writeln!(
            f,
            "Plan: {}.",
            parts
                .join(", ")
                .replace("to unchanged", "unchanged")
                .replace("to keep", "kept")
                .replace("to conflict", "in conflict")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::resource::Body;
    use crate::incus::{InstanceCreate, InstanceSource, Network, Profile, StorageVolume};

    fn res(kind: ResourceKind, name: &str) -> Resource {
        let body = match kind {
            ResourceKind::Network => Body::Network(Network::bridge(name, Default::default())),
            ResourceKind::Profile => Body::Profile(Profile::new(name)),
            ResourceKind::Instance => {
                Body::Instance(InstanceCreate::container(name, InstanceSource::alias("a")))
            }
            _ => unreachable!("not used here"),
        };
        Resource::new(body, None, "0.1.0")
    }

    #[test]
    fn converged_state_plans_no_changes() {
        let desired = vec![
            res(ResourceKind::Network, "management"),
            res(ResourceKind::Profile, "grafana"),
        ];
        let observed = desired
            .iter()
            .map(|r| {
                (
                    r.address(),
                    Observed::Owned {
                        hash: Some(r.hash.clone()),
                        etag: None,
                    },
                )
            })
            .collect();
        let plan = diff(&desired, &observed, &[]);
        assert!(!plan.has_changes());
        assert!(plan.to_string().starts_with("No changes"));
    }

    #[test]
    fn classifies_every_case_in_step_order() {
        let net = res(ResourceKind::Network, "management");
        let prof = res(ResourceKind::Profile, "grafana");
        let inst = res(ResourceKind::Instance, "grafana01");
        let vol = Resource::new(
            Body::Volume(StorageVolume::filesystem(
                "grafana01-data",
                Default::default(),
            )),
            Some("local"),
            "0.1.0",
        );
        let mut observed = BTreeMap::new();
        observed.insert(
            inst.address(),
            Observed::Owned {
                hash: Some("old".into()),
                etag: None,
            },
        );
        observed.insert(net.address(), Observed::Foreign);
        observed.insert(
            vol.address(),
            Observed::Owned {
                hash: Some(vol.hash.clone()),
                etag: None,
            },
        );
        let gone_instance = ResourceAddress {
            kind: ResourceKind::Instance,
            name: "grafana02".into(),
            pool: None,
        };
        let gone_profile = ResourceAddress {
            kind: ResourceKind::Profile,
            name: "grafana02".into(),
            pool: None,
        };
        let gone_volume = ResourceAddress {
            kind: ResourceKind::Volume,
            name: "grafana02-data".into(),
            pool: Some("local".into()),
        };
        let plan = diff(
            &[inst, prof, vol, net.clone()],
            &observed,
            &[
                gone_profile.clone(),
                gone_volume.clone(),
                gone_instance.clone(),
            ],
        );
        let got: Vec<(String, Change)> = plan
            .actions
            .iter()
            .map(|a| (a.address.to_string(), a.change.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("network management".into(), Change::Conflict),
                ("profile grafana".into(), Change::Create),
                ("volume local/grafana01-data".into(), Change::Unchanged),
                ("instance grafana01".into(), Change::Update),
                ("instance grafana02".into(), Change::Delete),
                ("volume local/grafana02-data".into(), Change::KeepData),
                ("profile grafana02".into(), Change::Delete),
            ]
        );
        assert!(plan.has_changes());
        let text = plan.to_string();
        assert!(
            text.contains("! network management (exists but is not managed"),
            "{text}"
        );
        assert!(
            text.contains(
                "Plan: 1 to create, 1 to update, 2 to delete, 1 kept, 1 in conflict, 1 unchanged."
            ),
            "{text}"
        );
    }

    #[test]
    fn a_name_another_atlas_project_manages_is_named_as_theirs() {
        // The same name, managed by atlas-install for another Atlas project: named as
        // that install's, not as something to remove.
        let net = res(ResourceKind::Network, "management");
        let mut other = BTreeMap::new();
        other.insert(
            net.address(),
            Observed::OtherProject {
                project: "atlas-demo".into(),
            },
        );
        let theirs = diff(std::slice::from_ref(&net), &other, &[]).to_string();
        assert!(
            theirs.contains("! network management (atlas-install manages it for the Atlas project atlas-demo, whose install uses it: leave it")
                && !theirs.contains("remove it"),
            "{theirs}"
        );
    }
}
