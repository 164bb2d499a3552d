//! The one `Context` every command runs in: the global flags, the printer, and what the
//! command reads from the world, each made once and only when the command first asks for it
//! (the config, the Incus client, the deployment, the async runtime). `config init` reads
//! nothing; `status` reads the config and Incus; `install` everything.

use std::cell::OnceCell;
use std::future::Future;

use anyhow::{Context as _, Result};
use atlas_install::config::{Config, LoadOptions};
use atlas_install::deployment::Deployment;
use atlas_install::engine::{Engine, Options, SecretSource, lock};
use atlas_install::incus::Client;
use atlas_install::progress::Progress;
use tokio::runtime::Runtime;

use crate::cli::GlobalArgs;
use crate::printer::Printer;

pub struct Context<'a> {
    pub global: &'a GlobalArgs,
    pub printer: &'a Printer,
    runtime: OnceCell<Runtime>,
    config: OnceCell<Config>,
    client: OnceCell<Client>,
    connected: OnceCell<Connected>,
}

/// What a command that drives the engine reads once, before it changes anything.
struct Connected {
    /// The config on this server or cluster.
    deployment: Deployment,
    secrets: Box<dyn SecretSource>,
}

/// `cell`'s value, made by `make` the first time.
fn get_or_try_init<T>(cell: &OnceCell<T>, make: impl FnOnce() -> Result<T>) -> Result<&T> {
    if let Some(v) = cell.get() {
        return Ok(v);
    }
    let v = make()?;
    Ok(cell.get_or_init(|| v))
}

impl<'a> Context<'a> {
    pub fn new(global: &'a GlobalArgs, printer: &'a Printer) -> Context<'a> {
        Context {
            global,
            printer,
            runtime: OnceCell::new(),
            config: OnceCell::new(),
            client: OnceCell::new(),
            connected: OnceCell::new(),
        }
    }

    /// The one async runtime of the process (multi-threaded: image builds block in place).
    pub fn runtime(&self) -> Result<&Runtime> {
        get_or_try_init(&self.runtime, || {
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")
        })
    }

    /// Runs `future` to its end on the runtime.
    pub fn block_on<F: Future>(&self, future: F) -> Result<F::Output> {
        Ok(self.runtime()?.block_on(future))
    }

    pub fn progress(&self) -> &'a dyn Progress {
        self.printer.progress()
    }

    /// The effective config: defaults < file < ATLAS_* env < flags. Every problem is reported
    /// at once; warnings (e.g. a token file others can read) go to stderr, once.
    pub fn config(&self) -> Result<&Config> {
        get_or_try_init(&self.config, || {
            let loaded = atlas_install::config::load(&self.load_options()?)?;
            self.print_warnings(&loaded.warnings);
            Ok(loaded.config)
        })
    }

    pub fn load_options(&self) -> Result<LoadOptions> {
        let mut env = Vec::new();
        for (k, v) in std::env::vars_os() {
            let Some(k) = k.to_str().filter(|k| k.starts_with("ATLAS_")) else {
                continue;
            };
            let Some(v) = v.to_str() else {
                anyhow::bail!("environment variable {k} is not valid UTF-8");
            };
            env.push((k.to_string(), v.to_string()));
        }
        let global = self.global;
        Ok(LoadOptions {
            file: global.config.clone(),
            cwd: std::env::current_dir().context("cannot determine the working directory")?,
            env,
            project: global.project.clone(),
            incus_socket: global
                .incus_socket
                .as_ref()
                .map(|p| p.display().to_string()),
        })
    }

    pub fn print_warnings(&self, warnings: &[String]) {
        for w in warnings {
            self.printer.warn(w);
        }
    }

    /// The Incus client of the config (scoped to the Atlas project).
    pub fn client(&self) -> Result<&Client> {
        get_or_try_init(&self.client, || {
            Client::from_config(&self.config()?.incus).context("connecting to Incus")
        })
    }

    /// How the config lands on this server or cluster, read once.
    pub fn deployment(&self) -> Result<&Deployment> {
        Ok(&self.connected()?.deployment)
    }

    /// Reads everything a command that drives the engine needs before it changes anything.
    fn connected(&self) -> Result<&Connected> {
        get_or_try_init(&self.connected, || {
            let (config, client) = (self.config()?, self.client()?);
            let runtime = self.runtime()?;
            // On a cluster the stack has per-member parts (see `deployment`). A daemon that
            // cannot be asked gives a standalone deployment: preflight then says what is
            // wrong. One that takes the request and never answers is said now: asking again
            // would only wait as long once more.
            let deployment = match runtime.block_on(Deployment::read(client, config)) {
                Ok(d) => d,
                Err(e) if e.is_no_answer() => {
                    return Err(
                        anyhow::Error::from(e).context("asking Incus whether it is a cluster")
                    );
                }
                Err(_) => Deployment::standalone(config),
            };
            Ok(Connected {
                deployment,
                secrets: super::test_hooks::secrets()?,
            })
        })
    }

    /// Takes the project's lock for `command` (see `engine::lock`), through a client of its
    /// own so its writes are not counted as the run's. Held until the guard drops. With
    /// `--json`, a refusal also prints the holder on stdout.
    pub fn lock(&self, command: &str) -> Result<Locked<'_>> {
        let config = self.config()?;
        let client = Client::from_config(&config.incus).context("connecting to Incus")?;
        let wait = std::time::Duration::from_secs(self.global.lock_timeout);
        let taken = self.block_on(lock::acquire(
            &client,
            &config.incus.project,
            command,
            wait,
            self.progress(),
        ))?;
        match taken {
            Ok(l) => Ok(Locked {
                lock: Some(l),
                ctx: self,
            }),
            Err(e) => {
                if let (true, lock::LockError::Held { project, holder }) =
                    (self.printer.json_mode(), &e)
                {
                    let out = serde_json::json!({"error": "locked", "project": project, "holder": holder});
                    self.printer.json(&out)?;
                }
                Err(e.into())
            }
        }
    }

    /// The engine over this context's deployment, with `options`.
    pub fn engine(&self, options: Options) -> Result<Engine<'_>> {
        let connected = self.connected()?;
        Ok(Engine {
            client: self.client()?.clone(),
            deployment: connected.deployment.clone(),
            secrets: connected.secrets.as_ref(),
            progress: self.progress(),
            options,
        })
    }
}

/// The project's lock while a command runs: released when dropped (an error or panic
/// included); a killed process leaves a record the stale-lock rule frees.
pub struct Locked<'c> {
    lock: Option<lock::ProjectLock>,
    ctx: &'c Context<'c>,
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let Some(l) = self.lock.take() else {
            return;
        };
        let project = l.project().to_string();
        let released = self.ctx.block_on(l.release());
        if let Ok(Err(e)) = released {
            self.ctx.printer.warn(format_args!(
                "could not release the lock of project {project} ({e}); the next run takes it over once this process is gone"
            ));
        }
    }
}
