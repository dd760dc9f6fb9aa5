use super::*;
use serde_json::{Value, json};

fn base() -> ContainerSpec {
    ContainerSpec {
        id: "web.1-abc".into(),
        rootfs: "/var/lib/cluster/rootfs/web".into(),
        args: vec!["/bin/httpd".into(), "-f".into()],
        env: vec!["A=1".into(), "B=two=2".into()],
        ..Default::default()
    }
}

fn config(spec: &ContainerSpec) -> Value {
    let users = UserDb::parse(
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
        "root:x:0:\napp:x:1001:\nextra:x:2000:app\n",
    );
    let s = build_spec(spec, &users, Path::new("/cluster/web.1-abc")).unwrap();
    serde_json::to_value(&s).unwrap()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn args_env_user_workdir_hostname() {
    let mut s = base();
    s.user = Some("app".into());
    s.workdir = Some("/srv".into());
    s.hostname = Some("web-1".into());
    let c = config(&s);
    let p = &c["process"];
    assert_eq!(p["args"], json!(["/bin/httpd", "-f"]));
    let env = strings(&p["env"]);
    assert!(env.contains(&"A=1".to_string()) && env.contains(&"B=two=2".to_string()));
    assert!(env.iter().any(|e| e.starts_with("PATH=/usr/local/sbin")));
    assert!(env.contains(&"HOME=/home/app".to_string()));
    assert!(env.contains(&"HOSTNAME=web-1".to_string()));
    assert_eq!(p["user"]["uid"], 1000);
    assert_eq!(p["user"]["gid"], 1001);
    assert_eq!(p["user"]["additionalGids"], json!([2000]));
    assert_eq!(p["cwd"], "/srv");
    assert_eq!(p["terminal"], false);
    assert_eq!(p["noNewPrivileges"], true);
    assert_eq!(c["hostname"], "web-1");
    assert_eq!(c["root"]["path"], "/var/lib/cluster/rootfs/web");
    assert_eq!(c["root"]["readonly"], false);
    assert_eq!(c["linux"]["cgroupsPath"], "/cluster/web.1-abc");
}

#[test]
fn caller_env_wins_and_numeric_user() {
    let mut s = base();
    s.env = vec!["PATH=/opt/bin".into(), "HOME=/data".into()];
    s.user = Some("4242:77".into());
    s.readonly_rootfs = true;
    let c = config(&s);
    let env = strings(&c["process"]["env"]);
    assert_eq!(
        env,
        vec!["PATH=/opt/bin".to_string(), "HOME=/data".to_string()]
    );
    assert_eq!(c["process"]["user"]["uid"], 4242);
    assert_eq!(c["process"]["user"]["gid"], 77);
    assert_eq!(c["root"]["readonly"], true);
}

#[test]
fn default_security_settings() {
    let c = config(&base());
    let caps = strings(&c["process"]["capabilities"]["bounding"]);
    assert_eq!(caps.len(), 14);
    for cap in [
        "CAP_CHOWN",
        "CAP_NET_BIND_SERVICE",
        "CAP_KILL",
        "CAP_AUDIT_WRITE",
        "CAP_SETPCAP",
    ] {
        assert!(
            caps.contains(&cap.to_string()),
            "{cap} missing from {caps:?}"
        );
    }
    assert!(!caps.contains(&"CAP_SYS_ADMIN".to_string()));
    assert_eq!(
        strings(&c["process"]["capabilities"]["effective"]).len(),
        14
    );
    assert_eq!(c["process"]["capabilities"]["inheritable"], json!([]));
    assert_eq!(c["process"]["capabilities"]["ambient"], json!([]));
    let masked = strings(&c["linux"]["maskedPaths"]);
    assert!(
        masked.contains(&"/proc/kcore".to_string())
            && masked.contains(&"/sys/firmware".to_string())
    );
    assert!(strings(&c["linux"]["readonlyPaths"]).contains(&"/proc/sys".to_string()));
    let dests: Vec<&str> = c["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["destination"].as_str().unwrap())
        .collect();
    assert_eq!(
        dests,
        [
            "/proc",
            "/dev",
            "/dev/pts",
            "/dev/shm",
            "/dev/mqueue",
            "/sys",
            "/sys/fs/cgroup"
        ]
    );
    let sys = &c["mounts"][5];
    assert!(strings(&sys["options"]).contains(&"ro".to_string()));
    let ns: Vec<&str> = c["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["type"].as_str().unwrap())
        .collect();
    assert_eq!(ns, ["pid", "ipc", "uts", "mount", "network"]);
    assert!(c["linux"]["namespaces"][4].get("path").is_none());
    assert_eq!(
        c["linux"]["resources"]["devices"],
        json!([{"allow": false, "access": "rwm"}])
    );
}

#[test]
fn mounts_and_netns() {
    let mut s = base();
    s.netns = Some("/run/netns/c1".into());
    s.mounts = vec![
        MountSpec::Bind {
            source: "/host/data".into(),
            target: "/data".into(),
            readonly: true,
        },
        MountSpec::Tmpfs {
            target: "/scratch".into(),
            size_bytes: Some(1 << 20),
        },
        MountSpec::Volume {
            source: "/var/lib/cluster/volumes/v".into(),
            target: "/v".into(),
            readonly: false,
        },
    ];
    let c = config(&s);
    let m = c["mounts"].as_array().unwrap();
    let bind = &m[7];
    assert_eq!(
        (
            bind["destination"].as_str(),
            bind["type"].as_str(),
            bind["source"].as_str()
        ),
        (Some("/data"), Some("bind"), Some("/host/data"))
    );
    assert_eq!(strings(&bind["options"]), ["rbind", "rprivate", "ro"]);
    let tmp = &m[8];
    assert_eq!(tmp["type"], "tmpfs");
    assert!(strings(&tmp["options"]).contains(&"size=1048576".to_string()));
    assert_eq!(strings(&m[9]["options"]), ["rbind", "rprivate"]);
    assert_eq!(
        c["linux"]["namespaces"][4],
        json!({"type": "network", "path": "/run/netns/c1"})
    );
}

#[test]
fn limits() {
    let mut s = base();
    s.limits = Limits {
        memory_bytes: Some(64 << 20),
        nano_cpus: Some(1_500_000_000),
        pids: Some(100),
    };
    let c = config(&s);
    let r = &c["linux"]["resources"];
    assert_eq!(r["memory"]["limit"], 64 << 20);
    assert_eq!(r["memory"]["swap"], 64 << 20);
    assert_eq!(r["cpu"]["quota"], 150_000);
    assert_eq!(r["cpu"]["period"], 100_000);
    assert_eq!(r["pids"]["limit"], 100);
    let none = config(&base());
    assert!(none["linux"]["resources"].get("memory").is_none());
}

#[test]
fn refuses_bad_input() {
    let users = UserDb::default();
    let cg = Path::new("/c");
    let check = |s: ContainerSpec| build_spec(&s, &users, cg).unwrap_err();
    let mut s = base();
    s.limits.memory_bytes = Some(MIN_MEMORY_BYTES - 1);
    let e = check(s);
    assert!(matches!(e, SpecError::MemoryTooLow(_)));
    assert!(e.to_string().contains("4 MiB"), "{e}");
    let mut s = base();
    s.limits.memory_bytes = Some(MIN_MEMORY_BYTES);
    assert!(build_spec(&s, &users, cg).is_ok());
    let mut s = base();
    s.limits.nano_cpus = Some(1000);
    assert!(matches!(check(s), SpecError::CpuTooLow(_)));
    let mut s = base();
    s.limits.pids = Some(0);
    assert!(matches!(check(s), SpecError::PidsTooLow));
    let mut s = base();
    s.args.clear();
    assert!(matches!(check(s), SpecError::NoArgs));
    for id in ["", "../x", "a/b", "..", "-x", &"x".repeat(129)] {
        let mut s = base();
        s.id = id.to_string();
        assert!(matches!(check(s), SpecError::InvalidId(_)), "{id}");
    }
    let mut s = base();
    s.env = vec!["=x".into()];
    assert!(matches!(check(s), SpecError::Invalid { .. }));
    let mut s = base();
    s.user = Some("app".into());
    assert!(check(s).to_string().contains("unable to find user app"));
    let mut s = base();
    s.workdir = Some("rel".into());
    assert!(matches!(check(s), SpecError::RelativePath(_)));
    let mut s = base();
    s.mounts = vec![MountSpec::Tmpfs {
        target: "tmp".into(),
        size_bytes: None,
    }];
    assert!(matches!(check(s), SpecError::RelativePath(_)));
    let mut s = base();
    s.hostname = Some("bad host".into());
    assert!(matches!(check(s), SpecError::Invalid { .. }));
}
