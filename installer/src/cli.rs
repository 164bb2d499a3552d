//! Command-line types. Kept apart from the library: the library never sees clap.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

const ABOUT: &str = "Stand up the Atlas observability stack (Caddy, Grafana, Prometheus, Loki, \
Alertmanager, step-ca, node-exporter, Mosquitto, optional cloudflared) on an Incus host, \
from one declarative config file, online or fully offline.";

#[derive(Debug, Parser)]
#[command(
    name = "atlas-install",
    version = crate::version_string(),
    about = ABOUT,
    long_about = None,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Clone)]
pub struct GlobalArgs {
    /// Config file (atlas.toml). Without it: ./atlas.toml if present, else the embedded defaults.
    #[arg(
        long,
        short = 'c',
        global = true,
        env = "ATLAS_CONFIG",
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,

    /// Unix socket of the Incus daemon (default: discovered from INCUS_SOCKET, INCUS_DIR,
    /// /run/incus/unix.socket, /var/lib/incus/unix.socket).
    #[arg(long, global = true, value_name = "PATH")]
    pub incus_socket: Option<PathBuf>,

    /// Incus project that holds the Atlas instances, profiles, volumes and images.
    #[arg(long, global = true, value_name = "NAME")]
    pub project: Option<String>,

    /// How to show progress: bars on a terminal (auto), timestamped lines (plain) or nothing.
    #[arg(long, global = true, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,

    /// Machine-readable output on stdout (progress and messages go to stderr).
    #[arg(long, global = true)]
    pub json: bool,

    /// Answer yes to confirmation prompts (needed when stdin is not a terminal).
    #[arg(long, short = 'y', global = true)]
    pub yes: bool,

    /// Commands that change the project (install, upgrade, rollback, destroy, backup
    /// snapshot|export|restore) take its lock, held in Incus; another run holding it makes
    /// them wait this many seconds for it, then refuse naming the holder (0: refuse at once).
    #[arg(long, global = true, value_name = "SECONDS", default_value_t = 0)]
    pub lock_timeout: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    Auto,
    Plain,
    None,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Install or converge the whole stack on this Incus host (idempotent: a second run changes nothing).
    Install(InstallArgs),
    /// Show what `install` would change, without changing anything.
    Plan(PlanArgs),
    /// Show what is installed and whether each service is healthy.
    Status,
    /// Remove everything atlas-install created. Volumes are kept unless --delete-volumes.
    Destroy(DestroyArgs),
    /// Upgrade an installed stack to the version this binary (or a bundle) carries.
    Upgrade(UpgradeArgs),
    /// Return the stack to the previously installed version.
    Rollback(RollbackArgs),
    /// Write every service's rendered configuration files to a directory, for review.
    Render(RenderArgs),
    /// Create, show and check the config file (atlas.toml).
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Build, convert, import and lock OCI images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Create, verify and inspect offline bundles (one file with the binary and every image).
    #[command(subcommand)]
    Bundle(BundleCommand),
    /// Snapshot, list, export and restore the data volumes.
    #[command(subcommand)]
    Backup(BackupCommand),
    /// Sign files and check signatures (minisign format), e.g. a release's SHA256SUMS.
    #[command(subcommand)]
    Signature(SignatureCommand),
    /// Name the generated secrets, or print one on purpose (no other command prints any).
    #[command(subcommand)]
    Secret(SecretCommand),
    /// Print shell completions (bash, zsh, fish, elvish, powershell) to stdout.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Install from an offline bundle file instead of registries.
    #[arg(long, value_name = "FILE", conflicts_with = "registry_mirror")]
    pub bundle: Option<PathBuf>,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Use this images.lock instead of the embedded one (digests are always verified).
    #[arg(long, value_name = "FILE")]
    pub images_lock: Option<PathBuf>,
    /// Use the images already under the aliases of `images.aliases` (default
    /// atlas/<service>) instead of building them from the embedded recipes.
    #[arg(long, conflicts_with_all = ["bundle", "images_lock", "registry_mirror"])]
    pub existing_images: bool,
    /// Go on even when the host is below the minimum CPU, memory or disk.
    #[arg(long)]
    pub ignore_preflight: bool,
    /// How long each service has to pass its health check (upgrade: before it is put back
    /// as it was).
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    pub health_timeout: u64,
    #[command(flatten)]
    pub trust: TrustArgs,
    /// Apply exactly the plan `plan --out FILE` saved, without asking; refused, changing
    /// nothing, when the config or Incus changed since.
    #[arg(long, value_name = "FILE")]
    pub plan: Option<PathBuf>,
}

/// Whose signatures a bundle may carry. Without these, only a release key embedded in this
/// binary is accepted.
#[derive(Debug, Args, Clone, Default)]
pub struct TrustArgs {
    /// Also accept signatures by this minisign public key: a `.pub` file or the base64 key
    /// string (repeatable). For bundles you signed yourself (`bundle create --sign`).
    #[arg(long, value_name = "PUBKEY")]
    pub trust_key: Vec<String>,
    /// Accept a bundle that carries no signature at all (one with a bad signature is still
    /// refused).
    #[arg(long)]
    pub allow_unsigned: bool,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Exit 0 when there is nothing to do, 2 when there are changes, 3 when preflight finds
    /// problems (install would refuse), 1 on any other error. Without it: 0 for a plan, 1 for
    /// preflight problems or an error.
    #[arg(long)]
    pub detailed_exitcode: bool,
    /// Plan as `install --ignore-preflight` would run: a host below the minimum CPU, memory
    /// or disk is a warning, not a problem.
    #[arg(long)]
    pub ignore_preflight: bool,
    /// Plan with the images already under the aliases of `images.aliases`, as
    /// `install --existing-images` would (a missing alias is then an error).
    #[arg(long)]
    pub existing_images: bool,
    /// Save the plan to FILE, for `install --plan FILE` to apply exactly it.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DestroyArgs {
    /// Also delete the data volumes and their snapshots (irreversible).
    #[arg(long)]
    pub delete_volumes: bool,
}

#[derive(Debug, Args)]
pub struct UpgradeArgs {
    /// Where the new images come from: a bundle, registries, or the aliases already in Incus.
    #[command(flatten)]
    pub source: InstallArgs,
    /// Generate new secrets (Grafana admin password, Mosquitto passwords, metrics
    /// certificate) and apply each the service's own way; the step-ca password is kept.
    #[arg(long)]
    pub rotate_secrets: bool,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// How long each restored service has to pass its health check.
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    pub health_timeout: u64,
}

#[derive(Debug, Args)]
pub struct RenderArgs {
    /// Output directory; files land at DIR/<instance>/<path in container>.
    #[arg(long, short = 'o', value_name = "DIR")]
    pub out: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Write a commented default config file.
    Init {
        /// Where to write it.
        #[arg(long, short = 'o', value_name = "FILE", default_value = "atlas.toml")]
        out: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Print the effective config (defaults, file, ATLAS_* env and flags merged), secrets redacted.
    Show,
    /// Check the config; exits non-zero with the file position or field path of each problem.
    Validate,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build the Atlas images of the services named (or of every enabled one) from their recipes.
    Build(ImageBuildArgs),
    /// Convert an OCI image (docker://, oci:, oci-archive:) into an Incus unified tarball.
    Convert {
        source: String,
        /// Output file; `-` writes to stdout.
        #[arg(long, short = 'o', value_name = "FILE")]
        out: PathBuf,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Convert an OCI image and import it straight into Incus, streamed (no file on disk).
    Import {
        source: String,
        /// Image alias in Incus (repeatable); created, or moved to this image.
        #[arg(long)]
        alias: Vec<String>,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Show an image in the Incus project (an alias such as atlas/prometheus, or a
    /// fingerprint): its properties, or with --sbom the bill of materials recorded with it.
    Inspect {
        image: String,
        /// Print the image's bill of materials (CycloneDX): a table of its components, or
        /// the CycloneDX JSON document with --json.
        #[arg(long)]
        sbom: bool,
    },
    /// Resolve every recipe's upstream tag to a digest and write images.lock (needs the registries).
    Lock {
        #[arg(long, short = 'o', value_name = "FILE", default_value = "images.lock")]
        out: PathBuf,
        #[command(flatten)]
        registry: RegistryArgs,
    },
}

/// Where images come from.
#[derive(Debug, Args, Clone, Default)]
pub struct RegistryArgs {
    /// Map docker.io, ghcr.io and quay.io references onto this registry mirror.
    #[arg(long, value_name = "HOST[:PORT]")]
    pub registry_mirror: Option<String>,
    /// Fetch the recipes' downloads (Caddy's plugin build) from this mirror instead:
    /// `https://HOST/PREFIX` or `file:///DIR`, holding `<host>/<path>` of each URL.
    #[arg(long, env = "ATLAS_DOWNLOAD_MIRROR", value_name = "URL")]
    pub download_mirror: Option<String>,
    /// Speak plain HTTP to this registry (loopback registries always are). Repeatable.
    #[arg(long, value_name = "HOST[:PORT]")]
    pub insecure_registry: Vec<String>,
    /// Blob cache and pin state (default /var/cache/atlas-install for root).
    #[arg(long, env = "ATLAS_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
}

#[derive(Debug, Args, Clone)]
pub struct ImageBuildArgs {
    /// Services to build (caddy, grafana, ...); without any, every service enabled in the config.
    #[arg(value_name = "SERVICE")]
    pub services: Vec<String>,
    /// Build from this recipe file instead of the embedded one (its [[file]] sources are
    /// read relative to the directory above the recipe's, the repository root).
    #[arg(long, value_name = "FILE", conflicts_with = "services")]
    pub recipe: Option<PathBuf>,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Use this images.lock instead of the embedded one.
    #[arg(long, value_name = "FILE")]
    pub images_lock: Option<PathBuf>,
    /// Write the images into this OCI image layout directory, each tagged with its service name.
    #[arg(long = "oci-layout", alias = "oci", value_name = "DIR")]
    pub oci_layout: Option<PathBuf>,
    /// Push each image to PREFIX/<service>:<base tag> (docker://HOST[:PORT]/PATH); base
    /// layers are mounted from the base's repository on the same registry, not uploaded. A
    /// full reference with a tag (docker://HOST/REPO:TAG) is taken as is when one image is built.
    #[arg(long, value_name = "docker://PREFIX")]
    pub push: Option<String>,
    /// Import into Incus (streamed), aliased atlas/<service>.
    #[arg(long)]
    pub import: bool,
}

#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Create an offline bundle: this binary, every base and Atlas image, the lock and a default config.
    Create(BundleCreateArgs),
    /// Check a bundle's signature, then every member against its manifest, offline.
    Verify {
        file: PathBuf,
        #[command(flatten)]
        trust: TrustArgs,
    },
    /// List a bundle's images, digests, sizes and versions (`--json` for machines).
    Inspect {
        file: PathBuf,
        /// Print the bill of materials (CycloneDX) of this Atlas image of the bundle: a table,
        /// or the CycloneDX JSON document with --json.
        #[arg(long, value_name = "IMAGE")]
        sbom: Option<String>,
    },
}

#[derive(Debug, Args, Clone)]
pub struct BundleCreateArgs {
    /// The bundle file to write (suggested name: atlas-<version>-<arch>.bundle).
    #[arg(long, short = 'o', value_name = "FILE")]
    pub out: PathBuf,
    /// Build only this service's embedded recipe (repeatable); every recipe when omitted.
    #[arg(long, value_name = "NAME", conflicts_with = "no_build")]
    pub service: Vec<String>,
    /// Build no recipe: take the images only from --oci layouts.
    #[arg(long, requires = "oci")]
    pub no_build: bool,
    /// Also copy every tagged image of this OCI layout directory in (repeatable), e.g. one
    /// written by `image build --oci DIR`.
    #[arg(long, value_name = "DIR")]
    pub oci: Vec<PathBuf>,
    /// Pull recipe bases by the digests in this images.lock instead of the embedded one.
    #[arg(long, value_name = "FILE")]
    pub images_lock: Option<PathBuf>,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Sign the bundle's manifest with this minisign secret key (`minisign -G` makes one);
    /// installs then need the public key (`--trust-key`) unless it is a release key.
    #[arg(long, value_name = "KEY")]
    pub sign: Option<PathBuf>,
    #[command(flatten)]
    pub password: PasswordArgs,
}

/// How an encrypted signing key's password is given: a file, else asked on the terminal.
#[derive(Debug, Args, Clone, Default)]
pub struct PasswordArgs {
    /// File whose first line is the signing key's password (keep it 0600). Not needed for a
    /// key made without one (`minisign -G -W`).
    #[arg(long, env = "ATLAS_SIGN_PASSWORD_FILE", value_name = "FILE")]
    pub sign_password_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum SignatureCommand {
    /// Sign files with a minisign secret key: writes FILE.minisig next to each (`minisign -V`
    /// checks them).
    Sign {
        /// The minisign secret key.
        #[arg(long, value_name = "KEY")]
        key: PathBuf,
        #[command(flatten)]
        password: PasswordArgs,
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Check FILE.minisig of each file against the embedded release keys and --trust-key.
    Verify {
        #[command(flatten)]
        trust: TrustArgs,
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// The names of the secrets stored in the Atlas project (never their values).
    List,
    /// Print one secret's value on stdout, e.g. `grafana-admin-password` or
    /// `mosquitto.atlas.password`.
    Get {
        #[arg(value_name = "NAME")]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Snapshot every Atlas data volume now (one snapshot name on every volume).
    Snapshot {
        /// Snapshot name (default: backup-<UTC time>, e.g. backup-20261126T140607Z).
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
    },
    /// List the snapshots of every Atlas data volume (--json for machine-readable output).
    List,
    /// Export every data volume as a tarball, with a manifest of SHA-256 sums (taken from a
    /// snapshot, so services keep running).
    Export {
        /// Directory for the tarballs and manifest.json (created; must not hold an export).
        #[arg(long, short = 'o', value_name = "DIR")]
        out: PathBuf,
    },
    /// Restore the data volumes from an export directory. Every file is checked first; each
    /// volume's instance is stopped, its current data kept as a snapshot, and started again.
    Restore {
        /// Directory written by `backup export`.
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}
