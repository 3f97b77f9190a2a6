//! Config loading end to end: text in, `Config` or one located line out.

use nix::unistd::AccessFlags;

use super::host::is_overlayfs;
use super::spans::line_col;
use super::*;

const DEFAULT_FILE: &str = include_str!("../../config/layerd.toml");
const ORIGIN: &str = "/etc/layerd/layerd.toml";

fn parse(text: &str) -> Result<Config, ConfigError> {
    parse_str(text, Path::new(ORIGIN))
}

fn err(text: &str) -> String {
    match parse(text) {
        Ok(c) => panic!("expected an error, got {c:#?}"),
        Err(e) => e.to_string(),
    }
}

/// Asserts one line, the file, `line:` and every `needles` part.
fn assert_err(text: &str, line: usize, needles: &[&str]) -> String {
    let msg = err(text);
    assert!(!msg.contains('\n'), "not one line: {msg}");
    let loc = format!("{ORIGIN}:{line}:");
    assert!(msg.starts_with(&loc), "expected {loc} in: {msg}");
    for n in needles {
        assert!(msg.contains(n), "expected {n:?} in: {msg}");
    }
    msg
}

/// A directory pool in a fresh temp dir (overlay only where the temp
/// dir is not itself on overlayfs).
fn tmp_pool_config(dir: &Path, extra: &str) -> String {
    format!(
            "[daemon]\nstate_dir = {:?}\nrun_dir = \"/run/layerd-test\"\n\n[[pool]]\nname = \"main\"\ndriver = \"vfs\"\n{extra}",
            dir.join("state")
        )
}

fn on_overlayfs(p: &Path) -> bool {
    let mut p = p;
    while !p.exists() {
        p = p.parent().unwrap_or(Path::new("/"));
    }
    is_overlayfs(p).unwrap_or(false)
}

#[test]
fn diff_idle_timeout_key() {
    let base = "[[pool]]\nname = \"main\"\ndriver = \"vfs\"\npath = \"/srv/p\"\n";
    let c = parse_inner(base, Path::new(ORIGIN), false).unwrap();
    assert_eq!(c.daemon.diff_idle_timeout, DEFAULT_DIFF_IDLE_TIMEOUT);
    for (v, want) in [("\"90s\"", 90_000), ("\"500ms\"", 500), ("2", 2000)] {
        let text = format!("[daemon]\ndiff_idle_timeout = {v}\n{base}");
        let c = parse_inner(&text, Path::new(ORIGIN), false).unwrap();
        assert_eq!(c.daemon.diff_idle_timeout.as_millis(), want, "{v}");
    }
    assert_err(
        &format!("[daemon]\ndiff_idle_timeout = \"0s\"\n{base}"),
        2,
        &["daemon.diff_idle_timeout", "must be more than 0"],
    );
    assert_err(
        &format!("[daemon]\ndiff_idle_timeout = \"1d\"\n{base}"),
        2,
        &["daemon.diff_idle_timeout", "unknown unit"],
    );
}

#[test]
fn default_file_loads() {
    // Without host checks it must always be valid…
    let c = parse_inner(DEFAULT_FILE, Path::new(ORIGIN), false).unwrap();
    assert_eq!(c, Config::builtin_default(Driver::Overlay));
    assert_eq!(c, builtin_default());
    // …and with them wherever /var/lib is usable for an overlay pool.
    let usable = nix::unistd::access("/var/lib", AccessFlags::W_OK).is_ok()
        && !on_overlayfs(Path::new("/var/lib"));
    match parse(DEFAULT_FILE) {
        Ok(c2) => assert_eq!(c2, c),
        Err(e) => assert!(!usable, "default file fails on a usable host: {e}"),
    }
}

#[test]
fn default_file_mentions_every_key() {
    for k in [
        "state_dir",
        "run_dir",
        "default_pool",
        "name",
        "driver",
        "backing",
        "path",
        "size",
        "metadata_device",
        "metadata_size",
        "block_size",
        "base_size",
        "fs",
        "warn_percent",
        "critical_percent",
        "min_free_percent",
        "autoextend_percent",
        "autoextend_max",
        "balance_unallocated_percent",
        "trim",
        "balance",
        "balance_dusage",
        "balance_musage",
        "[pool.monitor]",
        "[pool.maintenance]",
        "[containerd]",
        "socket_dir",
        "socket_group",
        "pools",
        "[[containerd.snapshotter]]",
    ] {
        assert!(DEFAULT_FILE.contains(k), "layerd.toml lacks {k}");
    }
}

#[test]
fn load_reads_a_file_and_reports_missing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("layerd.toml");
    fs::write(&file, tmp_pool_config(dir.path(), "")).unwrap();
    let c = load(&file).unwrap();
    assert_eq!(c.pools[0].path, dir.path().join("state/main"));
    assert!(load_optional(&dir.path().join("nope.toml"))
        .unwrap()
        .is_none());
    let e = load(&dir.path().join("nope.toml")).unwrap_err();
    assert!(e.is_not_found());
    assert_eq!(e.exit_code(), 2);
    assert!(e.to_string().contains("nope.toml"), "{e}");
    // A bad file names the real file.
    fs::write(&file, "bogus = 1\n").unwrap();
    let e = load(&file).unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("{}:1:1:", file.display())),
        "{e}"
    );
    assert_eq!(e.exit_code(), 2);
    // Validation creates nothing.
    assert!(!dir.path().join("state").exists());
}

#[test]
fn every_default() {
    let dir = tempfile::tempdir().unwrap();
    let c = parse(&tmp_pool_config(dir.path(), "")).unwrap();
    let d = DaemonConfig::default();
    assert_eq!(d.state_dir, Path::new("/var/lib/layerd"));
    assert_eq!(d.run_dir, Path::new("/run/layerd"));
    assert_eq!(d.default_pool, "main");
    assert_eq!(c.daemon.default_pool, "main");
    let p = &c.pools[0];
    assert_eq!(p.backing, Backing::Existing);
    assert_eq!(p.path, dir.path().join("state").join("main"));
    assert_eq!(p.size, None);
    assert_eq!(p.thin, None);
    assert_eq!(
        p.monitor,
        MonitorConfig {
            warn_percent: 80,
            critical_percent: 90,
            min_free_percent: 10,
            autoextend_percent: 20,
            autoextend_max: 500 << 30,
            balance_unallocated_percent: 10,
        }
    );
    assert_eq!(p.maintenance.trim.as_deref(), Some("weekly"));
    assert_eq!(p.maintenance.balance, None);
    assert_eq!(p.maintenance.balance_dusage, vec![0, 5, 10]);
    assert_eq!(p.maintenance.balance_musage, vec![0, 5]);

    // No [daemon] at all: daemon defaults (checked without the host).
    let c = parse_inner(
        "[[pool]]\nname = \"main\"\ndriver = \"thin\"\nsize = \"100G\"\n",
        Path::new(ORIGIN),
        false,
    )
    .unwrap();
    assert_eq!(c.daemon, DaemonConfig::default());
    let p = &c.pools[0];
    assert_eq!(p.backing, Backing::Loop);
    assert_eq!(p.path, Path::new("/var/lib/layerd/main"));
    assert_eq!(p.size, Some(100 << 30));
    assert_eq!(
        p.thin,
        Some(ThinConfig {
            metadata_device: None,
            metadata_size: None,
            block_size: 64 << 10,
            base_size: 10 << 30,
            fs: ThinFs::Xfs,
        })
    );
    assert_eq!(p.maintenance.balance, None);

    let c = parse_inner(
        "[[pool]]\nname = \"main\"\ndriver = \"btrfs\"\nsize = 1073741824\n",
        Path::new(ORIGIN),
        false,
    )
    .unwrap();
    assert_eq!(c.pools[0].maintenance.balance.as_deref(), Some("daily"));
    assert_eq!(c.pools[0].size, Some(1 << 30));
    let mut want = PoolConfig::with_defaults("main", Driver::Btrfs, Path::new(DEFAULT_STATE_DIR));
    want.size = Some(1 << 30);
    assert_eq!(c.pools[0], want);
}

#[test]
fn builtin_defaults() {
    let c = Config::builtin_default(Driver::Overlay);
    assert_eq!(c.daemon, DaemonConfig::default());
    assert_eq!(c.pools.len(), 1);
    let p = &c.pools[0];
    assert_eq!(
        (p.name.as_str(), p.driver, p.backing),
        ("main", Driver::Overlay, Backing::Existing)
    );
    assert_eq!(p.path, Path::new("/var/lib/layerd/main"));
    assert_eq!(c.default_pool().map(|p| p.name.as_str()), Some("main"));

    let t = Config::builtin_default(Driver::Thin);
    assert_eq!(t.pools[0].backing, Backing::Loop);
    assert_eq!(t.pools[0].size, Some(DEFAULT_LOOP_SIZE));
    assert!(t.pools[0].thin.is_some());

    let dir = tempfile::tempdir().unwrap();
    let daemon = DaemonConfig {
        state_dir: dir.path().join("state"),
        run_dir: dir.path().join("run"),
        default_pool: "main".into(),
        diff_idle_timeout: DEFAULT_DIFF_IDLE_TIMEOUT,
    };
    let v = Config::builtin_default_with(daemon.clone(), Driver::Vfs);
    assert_eq!(v.pools[0].path, dir.path().join("state/main"));
    v.validate().unwrap();
    let bad = Config::builtin_default_with(
        DaemonConfig {
            state_dir: "relative".into(),
            ..daemon
        },
        Driver::Vfs,
    );
    let e = bad.validate().unwrap_err().to_string();
    assert!(
        e.starts_with("(built-in default config): daemon.state_dir:"),
        "{e}"
    );
    assert!(!dir.path().join("state").exists());
}

#[test]
fn unknown_key_top_level() {
    let m = assert_err(
        "[daemon]\nstate_dir = \"/var/lib/layerd\"\n\nstorage = 1\n",
        4, // `storage` after [daemon] belongs to [daemon]
        &[
            ":4:1:",
            "unknown key \"storage\" in [daemon]",
            "expected one of state_dir, run_dir, default_pool",
        ],
    );
    assert!(!m.contains("pool \""), "{m}");
    assert_err(
        "storage = 1\n[daemon]\n",
        1,
        &[
            "unknown key \"storage\" at the top level",
            "expected one of daemon, pool, containerd",
        ],
    );
    assert_err(
        "# comment\n\n[deamon]\nstate_dir = \"/x\"\n",
        3,
        &[":3:2:", "unknown key \"deamon\" at the top level"],
    );
}

#[test]
fn unknown_key_in_daemon() {
    let m = assert_err(
        "[daemon]\nstate_dir = \"/var/lib/layerd\"\nrundir = \"/run/layerd\"\n",
        3,
        &[":3:1:", "unknown key \"rundir\" in [daemon]", "run_dir"],
    );
    let e = parse("[daemon]\nrundir = \"/x\"\n").unwrap_err();
    assert_eq!(e.key(), Some("daemon.rundir"));
    assert_eq!(e.location(), Some((2, 1)));
    assert!(!m.contains("pool \""), "{m}");
}

#[test]
fn unknown_key_in_pool() {
    let text = "[[pool]]\nname = \"main\"\ndriver = \"vfs\"\n\n[[pool]]\nname = \"b\"\ndriver = \"vfs\"\nsise = \"10G\"\n";
    assert_err(
        text,
        8,
        &[
            ":8:1:",
            "pool \"b\": unknown key \"sise\" in [pool]",
            "expected one of name, driver, backing, path, size",
        ],
    );
}

#[test]
fn unknown_key_in_monitor() {
    let text = "[[pool]]\nname = \"main\"\ndriver = \"vfs\"\n\n[pool.monitor]\nwarn_percent = 70\n  warn_percnt = 70\n";
    let e = parse(text).unwrap_err();
    assert_eq!(e.key(), Some("pool.monitor.warn_percnt"));
    assert_err(
        text,
        7,
        &[
            ":7:3:",
            "pool \"main\": unknown key \"warn_percnt\" in [pool.monitor]",
            "warn_percent, critical_percent",
        ],
    );
    // …and in [pool.maintenance], an inline table too.
    assert_err(
            "[[pool]]\nname = \"main\"\ndriver = \"vfs\"\nmaintenance = { trim = \"weekly\", scrub = \"monthly\" }\n",
            4,
            &["pool \"main\": unknown key \"scrub\" in [pool.maintenance]"],
        );
}

#[test]
fn wrong_types() {
    let text =
        "[[pool]]\nname = \"main\"\ndriver = \"vfs\"\n[pool.monitor]\nwarn_percent = \"high\"\n";
    assert_err(
        text,
        5,
        &[
            ":5:16:",
            "pool \"main\": monitor.warn_percent: expected an integer 0–100, found string \"high\"",
        ],
    );
    assert_err(
        "[[pool]]\nname = \"main\"\ndriver = \"vfs\"\n[pool.monitor]\ncritical_percent = 101\n",
        5,
        &["monitor.critical_percent: expected an integer 0–100, found integer 101"],
    );
    assert_err(
        "[daemon]\nstate_dir = 5\n",
        2,
        &[":2:13:", "daemon.state_dir: expected", "found integer 5"],
    );
    assert_err(
        "daemon = \"x\"\n",
        1,
        &["daemon: expected", "found string \"x\""],
    );
    assert_err(
            "[[pool]]\nname = \"main\"\ndriver = \"zfs\"\n",
            3,
            &["pool \"main\": driver: unknown driver \"zfs\", expected one of thin, btrfs, overlay, vfs"],
        );
    assert_err(
        "[[pool]]\nname = \"main\"\ndriver = \"aufs\"\n",
        3,
        &["use overlay"],
    );
    assert_err(
        "[[pool]]\nname = \"main\"\ndriver = \"vfs\"\n[pool.maintenance]\ntrim = 2024-01-01\n",
        5,
        &["maintenance.trim: expected a string, found a date-time"],
    );
    assert_err(
        "[[pool]]\nname = \"main\"\ndriver = \"vfs\"\n[pool.maintenance]\ntrim = \"\"\n",
        5,
        &["maintenance.trim: empty calendar spec"],
    );
    assert_err(
            "[[pool]]\nname = \"main\"\ndriver = \"vfs\"\n[pool.maintenance]\ntrim = \"weekly; rm -rf\"\n",
            5,
            &["maintenance.trim: invalid calendar spec", "';'"],
        );
    assert_err(
        "[[pool]]\nname = \"a\"\ndriver = \"vfs\"\n[[pool]]\ndriver = \"vfs\"\n",
        4,
        &["pool #2: missing required key \"name\""],
    );
    // Syntax errors: location and the key on that line.
    assert_err(
        "[daemon]\nstate_dir = /var/lib\n",
        2,
        &["invalid TOML at key \"state_dir\""],
    );
    assert_err(
        "[[pool]]\nname = \"a\"\nname = \"b\"\n",
        3,
        &["invalid TOML", "duplicate key"],
    );
}

#[test]
fn dotted_keys_and_implicit_tables_are_located() {
    // `monitor.x = …` makes [pool.monitor] implicitly, without a span.
    let base = "[[pool]]\nname = \"main\"\ndriver = \"vfs\"\n";
    assert_err(
        &format!("{base}maintenance.trim = 5\n"),
        4,
        &[
            ":4:20:",
            "pool \"main\": maintenance.trim: expected a string, found integer 5",
        ],
    );
    assert_err(
        &format!("{base}monitor.warn_percent = 95\n"),
        4,
        &[
            ":4:24:",
            "pool \"main\": monitor.warn_percent: must be below critical_percent",
        ],
    );
    assert_err(
        &format!("{base}monitor.warn = 1\n"),
        4,
        &[":4:9:", "unknown key \"warn\" in [pool.monitor]"],
    );
    assert_err(
        "daemon.run_dir = \"x\"\n",
        1,
        &[":1:18:", "daemon.run_dir: \"x\" is not an absolute path"],
    );
    // A date-time elsewhere in the file does not hide locations.
    assert_err(
        &format!("{base}monitor.warn = 1979-05-27\n"),
        4,
        &["unknown key \"warn\" in [pool.monitor]"],
    );
}

#[test]
fn duplicate_pool_points_at_second() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}\n[[pool]]\ndriver = \"vfs\"\nname = \"main\"\npath = {:?}\n",
        tmp_pool_config(dir.path(), ""),
        dir.path().join("other")
    );
    let line = text
        .lines()
        .position(|l| l.starts_with("name = \"main\"") && text.find(l).is_some())
        .unwrap();
    let second = text
        .lines()
        .enumerate()
        .filter(|(_, l)| *l == "name = \"main\"")
        .nth(1)
        .unwrap()
        .0
        + 1;
    assert!(second > line + 1);
    assert_err(
        &text,
        second,
        &["pool \"main\": name: duplicate pool name \"main\": pool #1 already has it"],
    );
}

#[test]
fn default_pool_must_exist() {
    let dir = tempfile::tempdir().unwrap();
    let text = tmp_pool_config(dir.path(), "")
        .replace("[daemon]\n", "[daemon]\ndefault_pool = \"fast\"\n");
    assert_err(
        &text,
        2,
        &[
            ":2:16:",
            "daemon.default_pool: names no configured pool: \"fast\" (configured: main)",
        ],
    );
    // Defaulted default_pool: points at [daemon].
    let text = tmp_pool_config(dir.path(), "").replace("name = \"main\"", "name = \"data\"");
    assert_err(
        &text,
        1,
        &["daemon.default_pool", "\"main\"", "configured: data"],
    );
    assert_err("", 1, &["pool: no pool is configured"]);
}

#[test]
fn sizes() {
    assert_eq!(parse_size("100G"), Ok(100 << 30));
    assert_eq!(parse_size("512M"), Ok(512 << 20));
    assert_eq!(parse_size("10GiB"), Ok(10 << 30));
    assert_eq!(parse_size("64K"), Ok(65536));
    assert_eq!(parse_size("64kb"), Ok(65536));
    assert_eq!(parse_size("4096"), Ok(4096));
    assert_eq!(parse_size(" 2 T "), Ok(2 << 40));
    assert_eq!(parse_size("0"), Ok(0));
    assert_eq!(parse_size("1E"), Ok(1 << 60));
    for bad in [
        "",
        "G",
        "-1G",
        "10X",
        "1.5G",
        "10 G B",
        "16E",
        "99999999999999999999",
    ] {
        let e = parse_size(bad).unwrap_err();
        assert!(e.contains("size"), "{bad:?}: {e}");
    }
    assert!(parse_size("1.5G").unwrap_err().contains("fractions"));
    assert!(parse_size("10X")
        .unwrap_err()
        .contains("unknown unit \"X\""));

    let pool =
        |size: &str| format!("[[pool]]\nname = \"main\"\ndriver = \"btrfs\"\nsize = {size}\n");
    assert_err(
        &pool("\"10X\""),
        4,
        &[
            ":4:8:",
            "pool \"main\": size: invalid size \"10X\": unknown unit",
        ],
    );
    assert_err(
        &pool("-5"),
        4,
        &["size: expected a byte size", "found integer -5"],
    );
    assert_err(
        &pool("1.5"),
        4,
        &["size: expected a byte size", "found floating point 1.5"],
    );
    assert_err(&pool("\"0\""), 4, &["size: must be larger than 0"]);
    assert_err(
        "[[pool]]\nname = \"main\"\ndriver = \"thin\"\n",
        3,
        &["pool \"main\": size: required with backing = \"loop\""],
    );
    assert_err(
        "[[pool]]\nname = \"main\"\ndriver = \"thin\"\nsize = \"1G\"\nblock_size = \"100K\"\n",
        5,
        &["block_size:", "multiple of 64K"],
    );
    assert_err(
            "[[pool]]\nname = \"main\"\ndriver = \"thin\"\nsize = \"1G\"\n[pool.monitor]\nautoextend_max = \"lots\"\n",
            6,
            &["monitor.autoextend_max: invalid size \"lots\""],
        );
}

#[test]
fn path_is_a_regular_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("afile");
    fs::write(&file, "x").unwrap();
    let text = tmp_pool_config(dir.path(), &format!("path = {file:?}\n"));
    let m = assert_err(
        &text,
        8,
        &[
            "pool \"main\": path:",
            "is a regular file, expected a directory",
        ],
    );
    assert!(m.contains(&file.display().to_string()), "{m}");
    // A file in the way of a path to be created.
    let text = tmp_pool_config(dir.path(), &format!("path = {:?}\n", file.join("sub")));
    assert_err(
        &text,
        8,
        &["cannot be created", "is a regular file, not a directory"],
    );
    // Nothing was created.
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn overlay_checks_the_file_system() {
    let dir = tempfile::tempdir().unwrap();
    let text = tmp_pool_config(dir.path(), "").replace("\"vfs\"", "\"overlay\"");
    if on_overlayfs(dir.path()) {
        assert_err(&text, 1, &["overlay file system"]);
    } else {
        parse(&text).unwrap();
    }
}

#[test]
fn relative_and_dotdot_paths() {
    assert_err(
        "[daemon]\nrun_dir = \"run/layerd\"\n",
        2,
        &[
            ":2:11:",
            "daemon.run_dir: \"run/layerd\" is not an absolute path",
        ],
    );
    assert_err(
        "[[pool]]\nname = \"main\"\ndriver = \"vfs\"\npath = \"srv/layers\"\n",
        4,
        &["pool \"main\": path: \"srv/layers\" is not an absolute path"],
    );
    assert_err(
        "[[pool]]\nname = \"main\"\ndriver = \"vfs\"\npath = \"/srv/../etc\"\n",
        4,
        &["path:", "must not contain \"..\""],
    );
}

#[test]
fn overlapping_paths() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let base = tmp_pool_config(dir.path(), &format!("path = {a:?}\n"));
    let text = format!(
        "{base}\n[[pool]]\nname = \"b\"\ndriver = \"vfs\"\npath = {:?}\n",
        a.join("b")
    );
    assert_err(
        &text,
        13,
        &["pool \"b\": path:", "is inside the path of pool \"main\""],
    );
    let text = format!(
        "{base}\n[[pool]]\nname = \"b\"\ndriver = \"vfs\"\npath = \"{}/./\"\n",
        a.display()
    );
    assert_err(&text, 13, &["is the same path as pool \"main\""]);
    let text = format!(
        "{base}\n[[pool]]\nname = \"b\"\ndriver = \"vfs\"\npath = \"{}//b/\"\n",
        a.display()
    );
    let m = assert_err(&text, 13, &["is inside the path of pool \"main\""]);
    assert!(m.contains(&format!("{:?}", a.join("b"))), "normalized: {m}");
    let text = format!(
        "{base}\n[[pool]]\nname = \"b\"\ndriver = \"vfs\"\npath = {:?}\n",
        dir.path()
    );
    assert_err(&text, 13, &["contains the path of pool \"main\""]);
    // Siblings with a common prefix do not overlap.
    let text = format!(
        "{base}\n[[pool]]\nname = \"b\"\ndriver = \"vfs\"\npath = \"{}2\"\n",
        a.display()
    );
    let c = parse(&text).unwrap();
    assert_eq!(c.pools.len(), 2);
    // A pool must not hold the state dir.
    let text = tmp_pool_config(dir.path(), &format!("path = {:?}\n", dir.path()));
    assert_err(&text, 8, &["is or contains the daemon's state_dir"]);
}

#[test]
fn thresholds_in_order() {
    let base = "[[pool]]\nname = \"main\"\ndriver = \"vfs\"\n[pool.monitor]\n";
    assert_err(
        &format!("{base}warn_percent = 95\n"),
        5,
        &[
            ":5:16:",
            "pool \"main\": monitor.warn_percent: must be below critical_percent",
            "95",
            "90",
        ],
    );
    assert_err(
        &format!("{base}warn_percent = 50\ncritical_percent = 50\n"),
        5,
        &["monitor.warn_percent: must be below critical_percent"],
    );
    assert_err(
        &format!("{base}min_free_percent = 100\n"),
        5,
        &["monitor.min_free_percent: must be below 100"],
    );
    assert_err(
        &format!("{base}warn_percent = -1\n"),
        5,
        &["expected an integer 0–100, found integer -1"],
    );
}

#[test]
fn driver_backing_and_key_rules() {
    let pool = |extra: &str| format!("[[pool]]\nname = \"main\"\ndriver = \"overlay\"\n{extra}");
    assert_err(
        &pool("backing = \"loop\"\n"),
        4,
        &["backing \"loop\" is not allowed", "omit backing"],
    );
    parse_inner(&pool("backing = \"existing\"\n"), Path::new(ORIGIN), false).unwrap();
    assert_err(
        &pool("size = \"1G\"\n"),
        4,
        &["size: only applies to backing = \"loop\""],
    );
    assert_err(
        &pool("fs = \"xfs\"\n"),
        4,
        &["fs: only applies to driver = \"thin\""],
    );
    assert_err(
        &pool("[pool.maintenance]\nbalance = \"daily\"\n"),
        5,
        &["maintenance.balance: only applies to driver = \"btrfs\""],
    );
    assert_err(
        &pool("[pool.monitor]\nautoextend_max = \"1T\"\n"),
        5,
        &["monitor.autoextend_max: only applies to pools that can grow"],
    );
    assert_err(
        "[[pool]]\nname = \"main\"\ndriver = \"thin\"\nbacking = \"device\"\n",
        4,
        &["path: required with backing = \"device\""],
    );
    assert_err(
        "[[pool]]\nname = \"bad name\"\ndriver = \"vfs\"\n",
        2,
        &["pool #1: name: invalid pool name \"bad name\""],
    );
    assert_err(
            "[[pool]]\nname = \"main\"\ndriver = \"btrfs\"\nsize = \"1G\"\n[pool.maintenance]\nbalance_dusage = [0, 10, 5]\n",
            6,
            &["maintenance.balance_dusage: must be strictly ascending"],
        );
    assert_err(
            "[[pool]]\nname = \"main\"\ndriver = \"btrfs\"\nsize = \"1G\"\n[pool.maintenance]\nbalance_musage = [0, 500]\n",
            6,
            &["maintenance.balance_musage", "expected an integer 0–100, found integer 500"],
        );
    // "none" disables a job.
    let c = parse_inner(
            "[[pool]]\nname = \"main\"\ndriver = \"btrfs\"\nsize = \"1G\"\n[pool.maintenance]\ntrim = \"none\"\nbalance = \"Sun *-*-* 03:00\"\n",
            Path::new(ORIGIN),
            false,
        )
        .unwrap();
    assert_eq!(c.pools[0].maintenance.trim, None);
    assert_eq!(
        c.pools[0].maintenance.balance.as_deref(),
        Some("Sun *-*-* 03:00")
    );
}

#[test]
fn balance_unallocated_percent() {
    let btrfs = |extra: &str| {
        format!("[[pool]]\nname = \"main\"\ndriver = \"btrfs\"\nsize = \"1G\"\n{extra}")
    };
    let get = |text: &str| {
        parse_inner(text, Path::new(ORIGIN), false).unwrap().pools[0]
            .monitor
            .balance_unallocated_percent
    };
    assert_eq!(get(&btrfs("")), 10, "default");
    assert_eq!(
        get(&btrfs("[pool.monitor]\nbalance_unallocated_percent = 5\n")),
        5
    );
    assert_eq!(
        get(&btrfs("[pool.monitor]\nbalance_unallocated_percent = 0\n")),
        0,
        "0 turns it off"
    );
    assert_err(
        &btrfs("[pool.monitor]\nbalance_unallocated_percent = 60\n"),
        6,
        &[
            "monitor.balance_unallocated_percent: must be at most 50",
            "found 60",
        ],
    );
    assert_err(
        &btrfs("[pool.monitor]\nbalance_unallocated_percent = 101\n"),
        6,
        &["monitor.balance_unallocated_percent: expected an integer 0–100"],
    );
    assert_err(
            "[[pool]]\nname = \"main\"\ndriver = \"vfs\"\n[pool.monitor]\nbalance_unallocated_percent = 5\n",
            5,
            &["monitor.balance_unallocated_percent: only applies to driver = \"btrfs\""],
        );
}

#[test]
fn every_error_is_one_located_line() {
    for t in [
            "[[pool]]\nname = \"main\"\ndriver = \"vfs\"\nsise = 1\n",
            "[[pool]]\nname = \"main\"\ndriver = \"vfs\"\n[pool.monitor]\nwarn_percent = \"high\"\n",
            "[[pool]]\nname = \"main\"\ndriver = \"thin\"\n",
            "[[pool]]\nname = \"main\"\ndriver = \"vfs\"\n[[pool]]\nname = \"main\"\ndriver = \"vfs\"\n",
            "[[pool]]\nname = \"main\"\ndriver = \"vfs\"\nmaintenance.trim = 5\n",
            "[[pool]]\nname = \"main\"\ndriver = \"vfs\"\n[pool.maintenance]\nbalance_dusage = [0, \"x\"]\n",
            "[daemon]\nstate_dir = \"/var/lib/layerd\"\nstate_dir = \"/x\"\n",
            "[[pool]]\nname = \"main\"\ndriver = \"vfs\"\npath = \"/etc/passwd\"\n",
            "[[pool]]\nname = \"main\"\ndriver = \"vfs\"\n[pool.monitor]\nwarn_percent = 95\n",
            "[daemon]\ndefault_pool = \"x\"\n[[pool]]\nname = \"main\"\ndriver = \"vfs\"\n",
            "pool = 3\n",
            "[[pool]]\nname = \"main\"\n",
            "daemon = \"x\"\n",
            "[daemon]\nstate_dir = 5\n",
            "[[pool]]\nname = \"main\"\ndriver = \"vfs\"\nmonitor = 5\n",
            "[[pool]]\nname = \"main\"\ndriver = \"vfs\"\n[pool.maintenance]\nbalance_dusage = 5\n",
            "[[pool]]\nname = \"main\"\ndriver = 5\n",
            "[[pool]]\nname = \"main\"\ndriver = \"vfs\"\nbacking = \"nfs\"\n",
            "[[pool]]\nname = \"main\"\ndriver = \"vfs\"\nname = \"main\"\n",
            "[[pool]]\nname = \"main\"\ndriver = \"vfs\"\n[pool.monitor]\n[pool.monitor]\n",
            "[[pool]\nname = \"main\"\n",
            "[[pool]]\nname = \"main\"\ndriver = \"thin\"\nsize=\"1G\"\nfs=\"btrfs\"\n",
        ] {
            let msg = err(t);
            assert!(!msg.contains('\n'), "{msg}");
            let rest = msg.strip_prefix(&format!("{ORIGIN}:")).unwrap_or_else(|| panic!("{msg}"));
            let mut parts = rest.splitn(3, ':');
            for _ in 0..2 {
                let n = parts.next().unwrap_or_default();
                assert!(!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()), "{msg}");
            }
            assert!(parts.next().is_some_and(|m| m.len() > 10), "{msg}");
        }
}

#[test]
fn duplicate_keys_name_key_and_table() {
    let base = "[[pool]]\nname = \"a\"\ndriver = \"vfs\"\n";
    assert_err(
        &format!("{base}driver = \"vfs\"\n"),
        4,
        &[r#"invalid TOML at key "driver": duplicate key "driver" in table "pool""#],
    );
    assert_err(
        &format!("{base}[pool.monitor]\nwarn_percent = 1\nwarn_percent = 2\n"),
        6,
        &[r#"duplicate key "warn_percent" in table "pool.monitor""#],
    );
    assert_err(
        "x = 1\nx = 2\n",
        2,
        &[r#"duplicate key "x" in document root"#],
    );
}

#[test]
fn line_col_counts_characters() {
    assert_eq!(line_col("ab\ncdé\nx", 0), (1, 1));
    assert_eq!(line_col("ab\ncdé\nx", 3), (2, 1));
    assert_eq!(line_col("ab\ncdé\nx", 8), (3, 1));
    assert_eq!(line_col("é=x", 2), (1, 2));
    assert_eq!(line_col("é=x", 3), (1, 3));
    // Inside a multi-byte character: rounds down, never panics.
    assert_eq!(line_col("é=x", 1), (1, 1));
    assert_eq!(line_col("é=x", 99), (1, 4));
}
