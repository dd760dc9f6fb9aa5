//! Pure construction of an OCI runtime `config.json` (oci-spec) for one container, with runc's
//! default mounts and Docker's default capabilities, masked and read-only paths.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder,
    LinuxResourcesBuilder, Mount, MountBuilder, ProcessBuilder, RootBuilder, Spec, SpecBuilder,
    UserBuilder,
};

use super::user::UserDb;

/// Docker refuses memory limits below 4 MiB.
pub const MIN_MEMORY_BYTES: u64 = 4 * 1024 * 1024;
/// CFS period used for `nano_cpus` (Docker's).
pub const CPU_PERIOD_US: u64 = 100_000;
/// Docker's smallest CPU limit: 0.01 CPU.
pub const MIN_NANO_CPUS: u64 = 10_000_000;
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Why a container spec cannot be turned into a runtime config.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error(
        "invalid container id {0:?}: use 1-128 characters of [A-Za-z0-9_.+-], not starting with '-'"
    )]
    InvalidId(String),
    #[error("the container has no command to run (entrypoint and cmd are empty)")]
    NoArgs,
    #[error("invalid {what}: {value:?}")]
    Invalid { what: &'static str, value: String },
    #[error("path {0:?} must be absolute")]
    RelativePath(PathBuf),
    #[error("memory limit {0} bytes is below the minimum of 4 MiB ({MIN_MEMORY_BYTES} bytes)")]
    MemoryTooLow(u64),
    #[error("cpu limit {0} nano CPUs is below the minimum of 0.01 CPU")]
    CpuTooLow(u64),
    #[error("pids limit must be at least 1")]
    PidsTooLow,
    #[error("unable to find user {0}: no matching entries in the image's /etc/passwd")]
    UnknownUser(String),
    #[error("unable to find group {0}: no matching entries in the image's /etc/group")]
    UnknownGroup(String),
    #[error("building the OCI spec: {0}")]
    Oci(#[from] oci_spec::OciSpecError),
}

/// What to run: everything the runtime needs, already resolved from the image and the service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerSpec {
    pub id: String,
    /// The prepared root filesystem (overlay mount) on the host.
    pub rootfs: PathBuf,
    /// Entrypoint + cmd, resolved.
    pub args: Vec<String>,
    /// `KEY=VALUE` pairs.
    pub env: Vec<String>,
    /// `name|uid[:group|gid]`; `None` = root.
    pub user: Option<String>,
    /// Working directory inside the container; `None` = `/`.
    pub workdir: Option<PathBuf>,
    pub hostname: Option<String>,
    pub mounts: Vec<MountSpec>,
    pub limits: Limits,
    /// Join this network namespace; `None` = a new one (loopback only).
    pub netns: Option<PathBuf>,
    pub readonly_rootfs: bool,
}

/// One mount into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountSpec {
    /// A host path bound into the container.
    Bind {
        source: PathBuf,
        target: PathBuf,
        readonly: bool,
    },
    /// A fresh tmpfs; `size_bytes: None` = the kernel's default (half of RAM).
    Tmpfs {
        target: PathBuf,
        size_bytes: Option<u64>,
    },
    /// A named volume, resolved by the caller to a host directory.
    Volume {
        source: PathBuf,
        target: PathBuf,
        readonly: bool,
    },
}

/// Resource limits; `None` = unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    /// CPUs in units of 10^-9 CPU (Docker's `NanoCPUs`).
    pub nano_cpus: Option<u64>,
    pub pids: Option<u64>,
}

/// Checks a container id against runc's rules (also keeps it safe as a path component).
pub fn validate_id(id: &str) -> Result<(), SpecError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('-')
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'+' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(SpecError::InvalidId(id.to_string()))
    }
}

/// Docker's default capability set.
pub fn default_capabilities() -> Vec<Capability> {
    use Capability::*;
    vec![
        Chown,
        DacOverride,
        Fsetid,
        Fowner,
        Mknod,
        NetRaw,
        Setgid,
        Setuid,
        Setfcap,
        Setpcap,
        NetBindService,
        SysChroot,
        Kill,
        AuditWrite,
    ]
}

/// Docker's masked paths.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Docker's read-only paths.
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Builds the runtime config. `users` is the image's user database ([`UserDb::load`]);
/// `cgroups_path` is where runc puts the container's cgroups.
pub fn build_spec(
    spec: &ContainerSpec,
    users: &UserDb,
    cgroups_path: &Path,
) -> Result<Spec, SpecError> {
    validate_id(&spec.id)?;
    if spec.args.is_empty() || spec.args[0].is_empty() {
        return Err(SpecError::NoArgs);
    }
    for a in &spec.args {
        no_nul("argument", a)?;
    }
    let user = users.resolve(spec.user.as_deref())?;
    let env = build_env(spec, user.home.as_deref())?;
    let cwd = spec.workdir.clone().unwrap_or_else(|| PathBuf::from("/"));
    absolute(&cwd)?;
    if let Some(h) = &spec.hostname {
        let valid = !h.is_empty()
            && h.len() <= 64
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !valid {
            return Err(SpecError::Invalid {
                what: "hostname",
                value: h.clone(),
            });
        }
    }
    let caps: oci_spec::runtime::Capabilities = default_capabilities().into_iter().collect();
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(
            UserBuilder::default()
                .uid(user.uid)
                .gid(user.gid)
                .additional_gids(user.additional_gids.clone())
                .build()?,
        )
        .args(spec.args.clone())
        .env(env)
        .cwd(cwd)
        .capabilities(
            LinuxCapabilitiesBuilder::default()
                .bounding(caps.clone())
                .effective(caps.clone())
                .permitted(caps)
                // Not the builder's defaults: no inheritable/ambient caps (CVE-2022-24769).
                .inheritable(oci_spec::runtime::Capabilities::new())
                .ambient(oci_spec::runtime::Capabilities::new())
                .build()?,
        )
        // None (unlike the builder's default of 1024 files): inherit the agent's, as Docker does.
        .rlimits(Vec::<oci_spec::runtime::PosixRlimit>::new())
        .no_new_privileges(true)
        .build()?;

    let mut mounts = default_mounts()?;
    for m in &spec.mounts {
        mounts.push(user_mount(m)?);
    }

    let mut namespaces = Vec::new();
    for typ in [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ] {
        namespaces.push(LinuxNamespaceBuilder::default().typ(typ).build()?);
    }
    let mut net = LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Network);
    if let Some(path) = &spec.netns {
        absolute(path)?;
        net = net.path(path.clone());
    }
    namespaces.push(net.build()?);

    let linux = LinuxBuilder::default()
        .cgroups_path(cgroups_path.to_path_buf())
        .namespaces(namespaces)
        .resources(resources(&spec.limits)?)
        .masked_paths(
            MASKED_PATHS
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .readonly_paths(
            READONLY_PATHS
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .build()?;

    let mut builder = SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path(spec.rootfs.clone())
                .readonly(spec.readonly_rootfs)
                .build()?,
        )
        .process(process)
        .mounts(mounts)
        .linux(linux);
    if let Some(h) = &spec.hostname {
        builder = builder.hostname(h.clone());
    }
    Ok(builder.build()?)
}

fn no_nul(what: &'static str, value: &str) -> Result<(), SpecError> {
    if value.contains('\0') {
        return Err(SpecError::Invalid {
            what,
            value: value.to_string(),
        });
    }
    Ok(())
}

fn absolute(p: &Path) -> Result<(), SpecError> {
    if p.is_absolute() {
        Ok(())
    } else {
        Err(SpecError::RelativePath(p.to_path_buf()))
    }
}

/// The caller's env plus PATH, HOME and HOSTNAME defaults when absent.
fn build_env(spec: &ContainerSpec, home: Option<&str>) -> Result<Vec<String>, SpecError> {
    let mut env = Vec::with_capacity(spec.env.len() + 3);
    for e in &spec.env {
        match e.split_once('=') {
            Some((k, _)) if !k.is_empty() && !e.contains('\0') => env.push(e.clone()),
            _ => {
                return Err(SpecError::Invalid {
                    what: "environment variable",
                    value: e.clone(),
                });
            }
        }
    }
    let has = |env: &[String], key: &str| {
        env.iter()
            .any(|e| e.split_once('=').is_some_and(|(k, _)| k == key))
    };
    if !has(&env, "PATH") {
        env.insert(0, DEFAULT_PATH.to_string());
    }
    if let Some(h) = &spec.hostname
        && !has(&env, "HOSTNAME")
    {
        env.push(format!("HOSTNAME={h}"));
    }
    if !has(&env, "HOME") {
        env.push(format!("HOME={}", home.unwrap_or("/")));
    }
    Ok(env)
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount, SpecError> {
    Ok(MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()?)
}

/// runc's default mounts (as `runc spec` writes them).
fn default_mounts() -> Result<Vec<Mount>, SpecError> {
    Ok(vec![
        mount("/proc", "proc", "proc", &[])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        )?,
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        )?,
    ])
}

fn user_mount(m: &MountSpec) -> Result<Mount, SpecError> {
    match m {
        MountSpec::Bind {
            source,
            target,
            readonly,
        }
        | MountSpec::Volume {
            source,
            target,
            readonly,
        } => {
            absolute(source)?;
            absolute(target)?;
            let mut opts = vec!["rbind".to_string(), "rprivate".to_string()];
            if *readonly {
                opts.push("ro".to_string());
            }
            Ok(MountBuilder::default()
                .destination(target.clone())
                .typ("bind")
                .source(source.clone())
                .options(opts)
                .build()?)
        }
        MountSpec::Tmpfs { target, size_bytes } => {
            absolute(target)?;
            let mut opts = vec![
                "nosuid".to_string(),
                "nodev".to_string(),
                "mode=1777".to_string(),
            ];
            if let Some(size) = size_bytes {
                opts.push(format!("size={size}"));
            }
            Ok(MountBuilder::default()
                .destination(target.clone())
                .typ("tmpfs")
                .source("tmpfs")
                .options(opts)
                .build()?)
        }
    }
}

fn resources(limits: &Limits) -> Result<oci_spec::runtime::LinuxResources, SpecError> {
    let deny_all = LinuxDeviceCgroupBuilder::default()
        .allow(false)
        .access("rwm")
        .build()?;
    let mut r = LinuxResourcesBuilder::default().devices(vec![deny_all]);
    if let Some(mem) = limits.memory_bytes {
        if mem < MIN_MEMORY_BYTES {
            return Err(SpecError::MemoryTooLow(mem));
        }
        let mem = i64::try_from(mem).map_err(|_| SpecError::Invalid {
            what: "memory limit",
            value: mem.to_string(),
        })?;
        // swap = memory + swap in the OCI spec: equal to the limit means no swap.
        r = r.memory(LinuxMemoryBuilder::default().limit(mem).swap(mem).build()?);
    }
    if let Some(n) = limits.nano_cpus {
        if n < MIN_NANO_CPUS {
            return Err(SpecError::CpuTooLow(n));
        }
        let quota = u128::from(n) * u128::from(CPU_PERIOD_US) / 1_000_000_000;
        let quota = i64::try_from(quota).map_err(|_| SpecError::Invalid {
            what: "cpu limit",
            value: n.to_string(),
        })?;
        r = r.cpu(
            LinuxCpuBuilder::default()
                .quota(quota)
                .period(CPU_PERIOD_US)
                .build()?,
        );
    }
    if let Some(p) = limits.pids {
        if p == 0 {
            return Err(SpecError::PidsTooLow);
        }
        let p = i64::try_from(p).map_err(|_| SpecError::Invalid {
            what: "pids limit",
            value: p.to_string(),
        })?;
        r = r.pids(LinuxPidsBuilder::default().limit(p).build()?);
    }
    Ok(r.build()?)
}

#[cfg(test)]
#[path = "spec_tests.rs"]
mod tests;
