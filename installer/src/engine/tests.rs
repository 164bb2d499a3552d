//! The engine against the fake Incus (`incus::fake`): plan, apply and their refusals, in
//! seconds. The real-daemon tests (`installer/tests/it`) cover the same flow end to end.
//!
//! Apply goes as far as the fake truthfully does: project, networks, volumes, profiles and
//! images (existing aliases, `--existing-images`). The instances step pushes files and
//! runs health probes, which the fake does not model, so the apply tests stop at the
//! `after-images` checkpoint, the engine's own failure point for tests.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::json;

use super::install::SecretsFuture;
use super::plan::Change;
use super::resource::ResourceKind;
use super::saved::{SavedPlan, SavedPlanError};
use super::secrets::Secrets;
use super::{Engine, EngineError, Options, PlanReport, SecretSource};
use crate::config::Config;
use crate::deployment::Deployment;
use crate::incus::fake::{FakeIncus, Kind};
use crate::incus::{Client, IncusError};
use crate::progress::NoProgress;
use crate::render::{Credentials, MqttCredential};

/// Fixed secrets, as `ATLAS_TEST_SECRETS_FILE` gives the binary.
struct Fixed(Secrets);

impl SecretSource for Fixed {
    fn load_or_generate<'a>(&'a self, _: &'a Client, _: &'a Config) -> SecretsFuture<'a> {
        let s = self.0.clone();
        Box::pin(async move { Ok(s) })
    }
}

fn secrets(cfg: &Config) -> Fixed {
    let ck = rcgen::generate_simple_self_signed(vec!["metrics".into()]).expect("rcgen");
    Fixed(Secrets {
        credentials: Credentials {
            grafana_admin_password: "admin-password".into(),
            step_ca_password: "ca-password".into(),
            mosquitto: cfg
                .mosquitto
                .users
                .iter()
                .map(|u| {
                    let m = MqttCredential {
                        password: format!("{u}-password"),
                        salt: [7; 12],
                    };
                    (u.clone(), m)
                })
                .collect(),
        },
        metrics_cert_pem: ck.cert.pem(),
        metrics_key_pem: ck.signing_key.serialize_pem(),
        hash_key: "hash-key".into(),
    })
}

/// One test's world: the fake daemon, the config, fixed secrets.
struct World {
    fake: Arc<FakeIncus>,
    client: Client,
    config: Config,
    secrets: Fixed,
}

impl World {
    fn new() -> World {
        let mut config = Config::builtin();
        // The pool the recorded daemon has.
        config.incus.storage_pool = "default".into();
        let fake = FakeIncus::new();
        let client = fake.client().in_project(&config.incus.project);
        let secrets = secrets(&config);
        World {
            fake,
            client,
            config,
            secrets,
        }
    }

    fn engine(&self, fail_at: Option<&str>) -> Engine<'_> {
        Engine {
            client: self.client.clone(),
            deployment: Deployment::standalone(&self.config),
            secrets: &self.secrets,
            progress: &NoProgress,
            options: Options {
                ignore_preflight: true,
                fail_at: fail_at.map(str::to_string),
                ..Options::default()
            },
        }
    }

    async fn plan(&self) -> PlanReport {
        self.engine(None).plan().await.expect("plan")
    }

    /// What `atlas-install image import` leaves: the project, and an image under every
    /// enabled service's alias.
    async fn with_images(&self) {
        super::ensure_project(&self.client, &self.config)
            .await
            .expect("project");
        let d = Deployment::standalone(&self.config);
        let services: BTreeSet<String> = d
            .enabled_instances()
            .into_iter()
            .map(|(_, i)| i.service.as_str().to_string())
            .collect();
        for s in services {
            let alias = super::state::image_alias(&self.config, &s);
            self.fake
                .seed_image(&self.config.incus.project, &alias, &[("description", &s)]);
        }
    }

    /// Apply up to the instances step (see the module docs).
    async fn apply_until_instances(&self, report: &PlanReport) -> u64 {
        let w0 = self.client.writes();
        let e = self
            .engine(Some("after-images"))
            .apply(report)
            .await
            .expect_err("stops at the checkpoint");
        assert!(matches!(e, EngineError::FailPoint(_)), "{e}");
        assert!(
            self.fake.unmodelled().is_empty(),
            "{:?}",
            self.fake.unmodelled()
        );
        self.client.writes() - w0
    }
}

/// `(kind, name)` of the plan's actions with `change`.
fn with_change(report: &PlanReport, change: Change) -> BTreeSet<(ResourceKind, String)> {
    report
        .plan
        .actions
        .iter()
        .filter(|a| a.change == change)
        .map(|a| (a.address.kind, a.address.name.clone()))
        .collect()
}

fn of_kind(report: &PlanReport, kind: ResourceKind) -> Vec<(String, Change)> {
    report
        .plan
        .actions
        .iter()
        .filter(|a| a.address.kind == kind)
        .map(|a| (a.address.name.clone(), a.change.clone()))
        .collect()
}

/// Everything the config manages: the project, each network, profile, volume and
/// enabled instance.
fn managed(cfg: &Config) -> BTreeSet<(ResourceKind, String)> {
    let d = Deployment::standalone(cfg);
    let mut out = BTreeSet::from([(ResourceKind::Project, cfg.incus.project.clone())]);
    for n in [
        &cfg.networks.development,
        &cfg.networks.testing,
        &cfg.networks.staging,
        &cfg.networks.production,
        &cfg.networks.management,
    ] {
        out.insert((ResourceKind::Network, n.name.clone()));
    }
    for (name, _) in d.enabled_instances() {
        out.insert((ResourceKind::Instance, name.to_string()));
    }
    out
}

#[tokio::test]
async fn plan_on_an_empty_incus_creates_everything_and_writes_nothing() {
    let w = World::new();
    let report = w.plan().await;
    assert_eq!(w.client.writes(), 0, "{:?}", w.fake.requests());
    let created = with_change(&report, Change::Create);
    for m in managed(&w.config) {
        assert!(created.contains(&m), "{m:?} not created in {created:?}");
    }
    for kind in [ResourceKind::Profile, ResourceKind::Volume] {
        assert!(
            created.iter().any(|(k, _)| *k == kind),
            "no {kind:?} created: {created:?}"
        );
    }
    assert_eq!(created.len(), report.plan.actions.len(), "{}", report.plan);
    assert!(w.fake.unmodelled().is_empty(), "{:?}", w.fake.unmodelled());
}

#[tokio::test]
async fn apply_writes_the_objects_and_a_second_plan_finds_them_unchanged() {
    let w = World::new();
    w.with_images().await;
    let report = w.plan().await;
    let writes = w.apply_until_instances(&report).await;
    assert!(writes > 0);
    for (kind, fake_kind, project) in [
        (ResourceKind::Network, Kind::Network, "default"),
        (
            ResourceKind::Profile,
            Kind::Profile,
            w.config.incus.project.as_str(),
        ),
        (
            ResourceKind::Volume,
            Kind::Volume,
            w.config.incus.project.as_str(),
        ),
    ] {
        let have = w.fake.names(fake_kind, project);
        for (name, change) in of_kind(&report, kind) {
            assert_eq!(change, Change::Create, "{kind:?} {name}");
            assert!(have.contains(&name), "{kind:?} {name} not in {have:?}");
        }
    }
    let w0 = w.client.writes();
    let again = w.plan().await;
    assert_eq!(w.client.writes(), w0, "a plan writes nothing");
    for kind in [
        ResourceKind::Project,
        ResourceKind::Network,
        ResourceKind::Profile,
        ResourceKind::Volume,
    ] {
        for (name, change) in of_kind(&again, kind) {
            assert_eq!(change, Change::Unchanged, "{kind:?} {name}\n{}", again.plan);
        }
    }
    // Only the instances, which the apply did not reach, are left to create.
    let left: BTreeSet<ResourceKind> = with_change(&again, Change::Create)
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        left,
        BTreeSet::from([ResourceKind::Instance]),
        "{}",
        again.plan
    );
}

#[tokio::test]
async fn an_object_atlas_does_not_own_is_a_conflict_and_apply_writes_nothing() {
    let w = World::new();
    w.with_images().await;
    let name = w.config.networks.management.name.clone();
    w.fake.create(
        Kind::Network,
        "default",
        json!({"name": name, "type": "bridge", "description": "someone else's",
               "config": {"ipv4.address": "10.99.0.1/24"}}),
    );
    let report = w.plan().await;
    assert_eq!(
        with_change(&report, Change::Conflict),
        BTreeSet::from([(ResourceKind::Network, name.clone())])
    );
    let w0 = w.client.writes();
    let e = w.engine(None).apply(&report).await.expect_err("refused");
    assert!(
        matches!(&e, EngineError::Conflicts(c) if c.iter().any(|c| c.contains(&name))),
        "{e}"
    );
    assert_eq!(w.client.writes(), w0, "no write before the refusal");
    let net = w
        .fake
        .get(Kind::Network, "default", &name)
        .expect("still there");
    assert_eq!(net["description"], "someone else's");
}

#[tokio::test]
async fn one_changed_setting_updates_exactly_the_objects_it_touches() {
    let mut w = World::new();
    w.with_images().await;
    let report = w.plan().await;
    w.apply_until_instances(&report).await;
    let net = w.config.networks.testing.name.clone();
    w.config.networks.testing.ipv4_nat = !w.config.networks.testing.ipv4_nat;
    let w0 = w.client.writes();
    let again = w.plan().await;
    assert_eq!(w.client.writes(), w0);
    assert_eq!(
        with_change(&again, Change::Update),
        BTreeSet::from([(ResourceKind::Network, net)]),
        "{}",
        again.plan
    );
}

#[tokio::test]
async fn a_saved_plan_is_refused_once_incus_changed() {
    let w = World::new();
    w.with_images().await;
    let report = w.plan().await;
    let saved = SavedPlan::new(&w.config, &report, true, true);
    let path = std::path::Path::new("plan.json");
    saved
        .check_current(path, &w.plan().await)
        .expect("nothing changed yet");
    let project = w.config.incus.project.clone();
    w.fake.edit(Kind::Project, "", &project, |p| {
        p["config"]["user.someone"] = json!("was here");
    });
    let e = saved
        .check_current(path, &w.plan().await)
        .expect_err("Incus changed since the plan");
    assert!(matches!(e, SavedPlanError::IncusChanged { .. }), "{e}");
}

#[tokio::test]
async fn a_write_over_a_concurrent_change_is_refused_with_the_typed_error() {
    let w = World::new();
    w.with_images().await;
    let report = w.plan().await;
    w.apply_until_instances(&report).await;
    let project = w.config.incus.project.clone();
    let profile = w
        .fake
        .names(Kind::Profile, &project)
        .into_iter()
        .find(|n| n != "default")
        .expect("a profile of Atlas");
    // The engine's converge reads, then writes with the ETag it read: a change in between
    // (another admin) must refuse the write, not be overwritten.
    let got = w.client.get_profile(&profile).await.expect("read");
    w.fake.edit(Kind::Profile, &project, &profile, |p| {
        p["config"]["user.someone"] = json!("was here");
    });
    let mut next = got.value.clone();
    next.config.insert("user.atlas.test".into(), "x".into());
    let e = w
        .client
        .update_profile(&next, got.etag.as_deref())
        .await
        .expect_err("stale ETag");
    assert!(matches!(e, IncusError::PreconditionFailed { .. }), "{e}");
    let now = w
        .fake
        .get(Kind::Profile, &project, &profile)
        .expect("profile");
    assert_eq!(now["config"]["user.someone"], "was here");
    assert!(now["config"].get("user.atlas.test").is_none());
    // With the fresh ETag the same write goes through.
    let fresh = w.client.get_profile(&profile).await.expect("read");
    w.client
        .update_profile(&next, fresh.etag.as_deref())
        .await
        .expect("fresh ETag");
}

#[tokio::test]
async fn apply_over_a_concurrent_change_stops_at_the_refused_write() {
    let mut w = World::new();
    w.with_images().await;
    let report = w.plan().await;
    w.apply_until_instances(&report).await;
    let net = w.config.networks.staging.name.clone();
    w.config.networks.staging.ipv4_nat = !w.config.networks.staging.ipv4_nat;
    let report = w.plan().await;
    w.fake
        .change_before_next_write(Kind::Network, "default", &net, |n| {
            n["config"]["user.someone"] = json!("was here");
        });
    let e = w
        .engine(None)
        .apply(&report)
        .await
        .expect_err("the write with the stale ETag is refused");
    // The engine names the object and keeps the client's typed error.
    match &e {
        EngineError::IncusAt { object, source } => {
            assert!(object.contains(&net), "{object}");
            assert!(
                matches!(**source, IncusError::PreconditionFailed { ref method, .. } if method == "PUT"),
                "{source:?}"
            );
        }
        other => panic!("want IncusAt with PreconditionFailed, got {other:?}"),
    }
    let now = w.fake.get(Kind::Network, "default", &net).expect("network");
    assert_eq!(now["config"]["user.someone"], "was here", "not overwritten");
}

/// An instance `svc01` in the project, from a seeded image, as Atlas leaves it.
async fn with_instance(w: &World) -> String {
    w.with_images().await;
    let project = w.config.incus.project.clone();
    let fp = w.fake.seed_image(&project, "svc-image", &[]);
    w.fake.create(
        Kind::Instance,
        &project,
        json!({
            "name": "svc01",
            "source": {"type": "image", "fingerprint": fp},
            "devices": {"root": {"type": "disk", "path": "/", "pool": "default"}},
            "config": {"user.atlas.hash": "old"},
        }),
    );
    project
}

#[tokio::test]
async fn an_instance_write_raced_by_incus_itself_reads_again_and_keeps_both() {
    let w = World::new();
    let project = with_instance(&w).await;
    // Incus rewrites volatile keys after each start and stop, and on every restart of a
    // service that exits: the engine's write then carries a stale ETag.
    w.fake
        .change_before_next_write(Kind::Instance, &project, "svc01", |i| {
            i["config"]["volatile.last_state.power"] = json!("STOPPED");
        });
    super::instances::edit(&w.client, "svc01", |cur| {
        let mut next = cur.clone();
        next.config.insert("user.atlas.hash".into(), "new".into());
        Some(next)
    })
    .await
    .expect("read again and written");
    let now = w
        .fake
        .get(Kind::Instance, &project, "svc01")
        .expect("instance");
    assert_eq!(now["config"]["user.atlas.hash"], "new");
    assert_eq!(
        now["config"]["volatile.last_state.power"], "STOPPED",
        "Incus' own change is kept"
    );
    let puts = w
        .fake
        .requests()
        .iter()
        .filter(|r| r.starts_with("PUT /1.0/instances/svc01?"))
        .count();
    assert_eq!(puts, 2, "{:?}", w.fake.requests());
}

#[tokio::test]
async fn an_instance_that_never_settles_gives_the_typed_refusal_after_a_few_tries() {
    let w = World::new();
    let project = with_instance(&w).await;
    for n in 0..super::instances::WRITE_ATTEMPTS {
        w.fake
            .change_before_next_write(Kind::Instance, &project, "svc01", move |i| {
                i["config"]["volatile.restarts"] = json!(n.to_string());
            });
    }
    let e = super::instances::edit(&w.client, "svc01", |cur| {
        let mut next = cur.clone();
        next.config.insert("user.atlas.hash".into(), "new".into());
        Some(next)
    })
    .await
    .expect_err("gives up");
    match &e {
        EngineError::IncusAt { object, source } => {
            assert_eq!(object, "instance svc01");
            assert!(
                matches!(**source, IncusError::PreconditionFailed { .. }),
                "{source:?}"
            );
        }
        other => panic!("want IncusAt with PreconditionFailed, got {other:?}"),
    }
    let now = w
        .fake
        .get(Kind::Instance, &project, "svc01")
        .expect("instance");
    assert_eq!(
        now["config"]["user.atlas.hash"], "old",
        "nothing overwritten"
    );
    // No change wanted: no write at all.
    let before = w.client.writes();
    super::instances::edit(&w.client, "svc01", |_| None)
        .await
        .expect("nothing to do");
    assert_eq!(w.client.writes(), before);
}

#[tokio::test]
async fn stopping_a_stopped_instance_is_no_error() {
    let w = World::new();
    let project = with_instance(&w).await;
    // Incus refuses it ("already stopped"); what counts is the state reached.
    super::converge::stop(&w.client, "svc01")
        .await
        .expect("stopped is what was asked");
    let now = w
        .fake
        .get(Kind::Instance, &project, "svc01")
        .expect("instance");
    assert_eq!(now["status"], "Stopped");
    let stops = w
        .fake
        .requests()
        .iter()
        .filter(|r| r.starts_with("PUT /1.0/instances/svc01/state"))
        .count();
    assert_eq!(
        stops,
        1,
        "refused once, then the state read: {:?}",
        w.fake.requests()
    );
}
