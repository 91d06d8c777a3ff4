//! The host with real plugin libraries: a C plugin compiled against the
//! committed header, the Rust probe and example-threshold built by cargo,
//! and every kind of bad file.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use plugin_host::{
    check_file, HostConfig, Lifecycle, LoadError, PluginHost, PluginState, Severity,
};

fn config(dir: &Path, watch: bool) -> HostConfig {
    HostConfig {
        plugin_dir: dir.join("plugins"),
        private_copy_dir: dir.join("copies"),
        plugin_config: HashMap::new(),
        max_consecutive_errors: 3,
        tick_interval: Duration::from_millis(50),
        watch,
    }
}

fn setup() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let plugins = tmp.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    (tmp, plugins)
}

fn status(host: &PluginHost, name: &str) -> Option<plugin_host::PluginStatus> {
    host.plugins().into_iter().find(|p| p.name == name)
}

#[test]
fn c_plugin_built_against_the_header_sees_events_and_its_alert_reaches_the_sink() {
    let (tmp, plugins) = setup();
    compile_c("test_plugin.c", &[], &plugins.join("c_probe.so"));
    let sink = Recorder::new();
    let host = PluginHost::start(config(tmp.path(), false), sink.clone()).unwrap();

    let p = status(&host, "c-probe").expect("c-probe listed");
    assert_eq!(p.status, PluginState::Running);
    assert_eq!(
        (p.version.as_str(), p.description.as_str()),
        ("1.0.0", "C test detector")
    );
    assert!(matches!(&sink.events()[..], [Lifecycle::Loaded { name, .. }] if name == "c-probe"));

    host.feed(batch(vec![
        ev(1, "auth.login.success", "success", "10.0.0.1"),
        ev(2, "auth.login.failure", "failure", "10.0.0.9"),
    ]));
    wait_for("the C plugin's alert", || !sink.alerts().is_empty());
    let a = &sink.alerts()[0];
    assert_eq!(
        (a.plugin.as_str(), a.rule.as_str()),
        ("c-probe", "c-failure")
    );
    assert_eq!(a.severity, Severity::Medium);
    assert_eq!(a.client_ip.as_deref(), Some("10.0.0.9"));
    assert_eq!(a.subject.as_deref(), Some("alice"));
    assert_eq!(a.group_key, "10.0.0.9");
    assert_eq!(a.evidence, vec![2]);
    assert_eq!(
        a.time_us,
        ev(2, "", "", "").time_us,
        "alert time is the batch's newest event time"
    );

    wait_for("counters", || {
        status(&host, "c-probe").unwrap().events_seen == 2
    });
    let p = status(&host, "c-probe").unwrap();
    assert_eq!((p.alerts_raised, p.errors), (1, 0));
    let metrics = host.metrics_text();
    assert!(
        metrics
            .contains("tokenwatch_plugin_events_total{plugin=\"c-probe\",file=\"c_probe.so\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("tokenwatch_plugin_alerts_total{plugin=\"c-probe\",file=\"c_probe.so\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tokenwatch_plugin_up{plugin=\"c-probe\",file=\"c_probe.so\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("# TYPE tokenwatch_plugin_time_seconds_total counter"));
    host.shutdown();
}

/// Every refusal in one folder: each file gets a Failed event with a reason
/// that says what is wrong, and the good plugin keeps working.
#[test]
fn bad_files_are_refused_with_a_clear_reason_and_the_host_keeps_serving() {
    let (tmp, plugins) = setup();
    compile_c("test_plugin.c", &[], &plugins.join("a_good.so"));
    std::fs::copy(plugins.join("a_good.so"), plugins.join("b_duplicate.so")).unwrap();
    std::fs::write(
        plugins.join("garbage.so"),
        b"this is not an ELF file at all",
    )
    .unwrap();
    compile_c("nosym.c", &[], &plugins.join("nosym.so"));
    compile_c(
        "test_plugin.c",
        &["-DTW_NAME=\"abi2\"", "-DTW_MAJOR=2"],
        &plugins.join("abi2.so"),
    );
    compile_c(
        "test_plugin.c",
        &["-DTW_NAME=\"tiny\"", "-DTW_STRUCT_SIZE=16"],
        &plugins.join("tiny.so"),
    );
    compile_c(
        "test_plugin.c",
        &["-DTW_NAME=\"picky\""],
        &plugins.join("picky.so"),
    );
    std::fs::write(plugins.join("picky.toml"), "mode = \"fail\"\n").unwrap();
    compile_c(
        "test_plugin.c",
        &["-DTW_NAME=\"badtoml\""],
        &plugins.join("badtoml.so"),
    );
    std::fs::write(plugins.join("badtoml.toml"), "this is = = not toml").unwrap();
    // Not candidates at all: dotfiles, temp files, other suffixes.
    std::fs::copy(plugins.join("a_good.so"), plugins.join(".hidden.so")).unwrap();
    std::fs::copy(plugins.join("a_good.so"), plugins.join("a_good.so.tmp")).unwrap();
    std::fs::write(plugins.join("README.txt"), "notes").unwrap();

    let sink = Recorder::new();
    let host = PluginHost::start(config(tmp.path(), false), sink.clone()).unwrap();

    let cases: &[(&str, &str)] = &[
        (
            "b_duplicate.so",
            "a plugin named \"c-probe\" is already loaded from",
        ),
        ("garbage.so", "not a shared library"),
        ("nosym.so", "no `tokenwatch_detector_v1` symbol"),
        (
            "abi2.so",
            "built for detector ABI 2.x, this host speaks 1.x",
        ),
        (
            "tiny.so",
            "descriptor struct_size 16 is smaller than the v1 layout",
        ),
        (
            "picky.so",
            "plugin \"picky\" refused its config: c-probe: config asks to fail",
        ),
        ("badtoml.so", "bad plugin config"),
    ];
    for (file, expected) in cases {
        let path = plugins.join(file);
        let reason = sink
            .failure_for(&path)
            .unwrap_or_else(|| panic!("no Failed event for {file}"));
        assert!(
            reason.contains(expected),
            "{file}: {reason:?} does not contain {expected:?}"
        );
        let listed = host
            .plugins()
            .into_iter()
            .find(|p| p.file == path)
            .expect("listed");
        assert!(
            matches!(&listed.status, PluginState::Failed(r) if r == &reason),
            "{file}: {:?}",
            listed.status
        );
    }
    let names: Vec<_> = host
        .plugins()
        .into_iter()
        .map(|p| p.file.file_name().unwrap().to_owned())
        .collect();
    assert_eq!(
        names.len(),
        8,
        "dotfiles, temp files and non-.so files are ignored: {names:?}"
    );
    // The plugin name is reported once the descriptor was readable.
    assert!(sink.events().iter().any(|e| matches!(e,
        Lifecycle::Failed { name: Some(n), file, .. } if n == "picky" && file.ends_with("picky.so"))));

    // Reload by name targets the running plugin, not the refused duplicate.
    host.reload("c-probe").unwrap();
    let metrics = host.metrics_text();
    assert!(
        metrics.contains("tokenwatch_plugin_up{plugin=\"c-probe\",file=\"a_good.so\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tokenwatch_plugin_up{plugin=\"c-probe\",file=\"b_duplicate.so\"} 0"),
        "{metrics}"
    );
    host.feed(batch(vec![ev(7, "token.rejected", "failure", "10.1.1.1")]));
    wait_for("the good plugin still alerts", || sink.alerts().len() == 1);
    assert_eq!(sink.alerts()[0].plugin, "c-probe");
    host.shutdown();
}

#[test]
fn check_file_says_what_a_file_is_or_why_it_is_refused() {
    let (tmp, plugins) = setup();
    let good = plugins.join("good.so");
    compile_c("test_plugin.c", &["-DTW_VERSION=\"2.5.0\""], &good);
    let info = check_file(&good).unwrap();
    assert_eq!(
        (info.name.as_str(), info.version.as_str()),
        ("c-probe", "2.5.0")
    );
    assert_eq!((info.abi_major, info.abi_minor), (1, 0));

    // A plugin from a newer minor with a bigger descriptor (appended fields)
    // still loads: the host reads only the fields it knows.
    let newer = plugins.join("newer.so");
    compile_c(
        "test_plugin.c",
        &["-DTW_STRUCT_SIZE=(sizeof(TwDetectorDescriptor)+64)"],
        &newer,
    );
    assert_eq!(check_file(&newer).unwrap().name, "c-probe");

    let abi = plugins.join("abi.so");
    compile_c("test_plugin.c", &["-DTW_MAJOR=7"], &abi);
    assert!(matches!(
        check_file(&abi),
        Err(LoadError::AbiMajorMismatch {
            found: 7,
            expected: 1,
            ..
        })
    ));
    let nosym = plugins.join("nosym.so");
    compile_c("nosym.c", &[], &nosym);
    assert!(matches!(
        check_file(&nosym),
        Err(LoadError::MissingSymbol { .. })
    ));
    let junk = plugins.join("junk.so");
    std::fs::write(&junk, [0u8; 64]).unwrap();
    assert!(matches!(
        check_file(&junk),
        Err(LoadError::NotSharedLibrary { .. })
    ));
    // A truncated library passes the magic check but its ELF headers point past
    // the end of the file: refused before it is ever mapped (a mapped truncated
    // file is a SIGBUS waiting to happen).
    let bytes = std::fs::read(&good).unwrap();
    let truncated = plugins.join("truncated.so");
    std::fs::write(&truncated, &bytes[..200]).unwrap();
    let err = check_file(&truncated).unwrap_err();
    assert!(matches!(err, LoadError::BadElf { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("truncated.so: refused before loading: truncated or corrupt"),
        "{err}"
    );
    // The config beside the file is used by check too.
    std::fs::write(plugins.join("good.toml"), "fail = true").unwrap();
    assert!(matches!(
        check_file(&good),
        Err(LoadError::CreateFailed { .. })
    ));
    assert!(matches!(
        check_file(&tmp.path().join("missing.so")),
        Err(LoadError::Io { .. })
    ));
}

#[test]
fn rust_plugin_panics_become_errors_and_repeated_failures_disable_it() {
    let (tmp, plugins) = setup();
    std::fs::copy(probe_so(), plugins.join("probe.so")).unwrap();
    compile_c("test_plugin.c", &[], &plugins.join("c_probe.so"));
    let sink = Recorder::new();
    let host = PluginHost::start(config(tmp.path(), false), sink.clone()).unwrap();
    assert_eq!(
        status(&host, "rust-probe").unwrap().status,
        PluginState::Running
    );

    host.feed(batch(vec![ev(1, "test.panic", "success", "x")]));
    wait_for("the panic is counted", || {
        status(&host, "rust-probe").unwrap().errors == 1
    });
    let p = status(&host, "rust-probe").unwrap();
    assert_eq!(
        p.status,
        PluginState::Running,
        "one panic is not enough to disable"
    );
    assert_eq!(
        p.last_error.as_deref(),
        Some("detector panicked: probe panics on event 1")
    );

    // Still usable after the panic, and a success resets the streak.
    host.feed(batch(vec![ev(2, "test.alert", "success", "x")]));
    host.feed(batch(vec![ev(3, "test.error", "success", "x")]));
    host.feed(batch(vec![ev(4, "test.panic", "success", "x")]));
    wait_for("alert from the probe", || {
        sink.alerts().iter().any(|a| a.plugin == "rust-probe")
    });
    wait_for("three errors", || {
        status(&host, "rust-probe").unwrap().errors == 3
    });
    assert_eq!(
        status(&host, "rust-probe").unwrap().status,
        PluginState::Running
    );

    host.feed(batch(vec![ev(5, "test.error", "success", "x")]));
    wait_for("disabled after 3 in a row", || {
        matches!(
            status(&host, "rust-probe").unwrap().status,
            PluginState::Failed(_)
        )
    });
    let PluginState::Failed(reason) = status(&host, "rust-probe").unwrap().status else {
        unreachable!()
    };
    assert_eq!(
        reason,
        "disabled after 3 errors in a row; last: probe error on event 5"
    );
    assert!(sink
        .events()
        .iter()
        .any(|e| matches!(e, Lifecycle::Failed { name: Some(n), .. } if n == "rust-probe")));
    assert!(host
        .metrics_text()
        .contains("tokenwatch_plugin_up{plugin=\"rust-probe\",file=\"probe.so\"} 0"));

    // The disabled plugin gets nothing more; the C plugin keeps working.
    let seen = status(&host, "rust-probe").unwrap().events_seen;
    host.feed(batch(vec![ev(6, "auth.login.failure", "failure", "y")]));
    wait_for("C plugin alert", || {
        sink.alerts()
            .iter()
            .any(|a| a.plugin == "c-probe" && a.evidence == [6])
    });
    assert_eq!(status(&host, "rust-probe").unwrap().events_seen, seen);

    // An operator reload brings it back with fresh state.
    host.reload("rust-probe").unwrap();
    assert_eq!(
        status(&host, "rust-probe").unwrap().status,
        PluginState::Running
    );
    host.shutdown();
}

#[test]
fn c_plugin_errors_are_counted_and_reported() {
    let (tmp, plugins) = setup();
    compile_c("test_plugin.c", &[], &plugins.join("c.so"));
    let sink = Recorder::new();
    let host = PluginHost::start(config(tmp.path(), false), sink.clone()).unwrap();
    host.feed(batch(vec![ev(1, "c.error", "success", "x")]));
    wait_for("error counted", || {
        status(&host, "c-probe").unwrap().errors == 1
    });
    assert_eq!(
        status(&host, "c-probe").unwrap().last_error.as_deref(),
        Some("c-probe: cannot handle c.error")
    );
}

#[test]
fn hot_reload_adds_replaces_and_removes_plugins_in_a_watched_folder() {
    let (tmp, plugins) = setup();
    let build = tmp.path().join("build");
    std::fs::create_dir(&build).unwrap();
    compile_c(
        "test_plugin.c",
        &["-DTW_NAME=\"hot\"", "-DTW_VERSION=\"1\""],
        &build.join("v1.so"),
    );
    compile_c(
        "test_plugin.c",
        &["-DTW_NAME=\"hot\"", "-DTW_VERSION=\"2\""],
        &build.join("v2.so"),
    );
    std::fs::write(build.join("junk.so"), b"garbage").unwrap();

    let sink = Recorder::new();
    let host = PluginHost::start(config(tmp.path(), true), sink.clone()).unwrap();
    assert!(host.plugins().is_empty());
    let target = plugins.join("hot.so");

    // Add.
    atomic_install(&build.join("v1.so"), &target);
    wait_for("v1 loaded", || {
        status(&host, "hot").is_some_and(|p| p.version == "1")
    });
    host.feed(batch(vec![ev(1, "x", "failure", "a")]));
    wait_for("v1 alerts", || sink.alerts().len() == 1);

    // Replace: fresh instance of the new version.
    atomic_install(&build.join("v2.so"), &target);
    wait_for("v2 loaded", || {
        status(&host, "hot").is_some_and(|p| p.version == "2")
    });
    let loaded: Vec<_> = sink
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Lifecycle::Loaded { version, .. } => Some(version),
            _ => None,
        })
        .collect();
    assert_eq!(loaded, ["1", "2"]);

    // A bad replacement is refused and v2 keeps running.
    atomic_install(&build.join("junk.so"), &target);
    wait_for("junk refused", || sink.failure_for(&target).is_some());
    assert!(sink.failure_for(&target).unwrap().contains("keeps running"));
    let p = status(&host, "hot").unwrap();
    assert_eq!((p.status, p.version.as_str()), (PluginState::Running, "2"));
    host.feed(batch(vec![ev(2, "x", "failure", "a")]));
    wait_for("v2 still alerts", || sink.alerts().len() == 2);

    // A config change beside the plugin reloads it with that config.
    atomic_install(&build.join("v1.so"), &target);
    wait_for("v1 back", || {
        status(&host, "hot").is_some_and(|p| p.version == "1")
    });
    std::fs::write(plugins.join("hot.toml"), "fail = true\n").unwrap();
    wait_for("config refused", || {
        sink.failure_for(&target)
            .is_some_and(|r| r.contains("config asks to fail"))
    });
    std::fs::remove_file(plugins.join("hot.toml")).unwrap();

    // Remove.
    let before = sink.events().len();
    std::fs::remove_file(&target).unwrap();
    wait_for("unloaded", || host.plugins().is_empty());
    assert!(sink.events()[before..]
        .iter()
        .any(|e| matches!(e, Lifecycle::Unloaded { name, .. } if name == "hot")));
    host.shutdown();
}

#[test]
fn the_loaded_code_is_a_private_copy_so_overwriting_the_original_is_harmless() {
    let (tmp, plugins) = setup();
    let file = plugins.join("c.so");
    compile_c("test_plugin.c", &[], &file);
    let sink = Recorder::new();
    let host = PluginHost::start(config(tmp.path(), false), sink.clone()).unwrap();
    // Overwrite in place (same inode): if the host had mapped this file, its
    // code pages would now be garbage and the next call would crash.
    let len = std::fs::metadata(&file).unwrap().len() as usize;
    std::fs::write(&file, vec![0xCCu8; len]).unwrap();
    host.feed(batch(vec![ev(1, "x", "failure", "a")]));
    wait_for("still alerting", || sink.alerts().len() == 1);
    std::fs::remove_file(&file).unwrap();
    host.feed(batch(vec![ev(2, "x", "failure", "a")]));
    wait_for("still alerting", || sink.alerts().len() == 2);
    // Private copies are unlinked right after loading: nothing accumulates.
    assert_eq!(
        std::fs::read_dir(tmp.path().join("copies"))
            .unwrap()
            .count(),
        0
    );
    host.shutdown();
}

#[test]
fn disable_and_reload_by_name() {
    let (tmp, plugins) = setup();
    compile_c("test_plugin.c", &[], &plugins.join("c.so"));
    let sink = Recorder::new();
    let host = PluginHost::start(config(tmp.path(), false), sink.clone()).unwrap();
    host.disable("c-probe").unwrap();
    assert_eq!(
        status(&host, "c-probe").unwrap().status,
        PluginState::Disabled
    );
    assert!(
        matches!(sink.events().last(), Some(Lifecycle::Unloaded { name, .. }) if name == "c-probe")
    );
    host.feed(batch(vec![ev(1, "x", "failure", "a")]));
    host.reload("c-probe").unwrap();
    host.feed(batch(vec![ev(2, "x", "failure", "a")]));
    wait_for("alert after reload", || !sink.alerts().is_empty());
    assert_eq!(
        sink.alerts()[0].evidence,
        vec![2],
        "nothing reached the disabled plugin"
    );
    let err = host.reload("nope").unwrap_err();
    assert_eq!(
        err.to_string(),
        "no plugin named \"nope\"; `tokenwatch plugins list` shows the loaded ones"
    );
    assert!(host.disable("nope").is_err());
}

#[test]
fn example_threshold_plugin_uses_its_config_and_backtests_over_history() {
    let (tmp, plugins) = setup();
    let so = plugins.join("libexample_threshold.so");
    std::fs::copy(threshold_so(), &so).unwrap();
    let mut cfg = config(tmp.path(), false);
    cfg.plugin_config.insert(
        "example-threshold".into(),
        serde_json::json!({"threshold": 2, "window_secs": 60}),
    );
    let sink = Recorder::new();
    let host = PluginHost::start(cfg, sink.clone()).unwrap();
    host.feed(batch(vec![ev(
        1,
        "auth.login.failure",
        "failure",
        "10.9.9.9",
    )]));
    host.feed(batch(vec![ev(
        2,
        "auth.login.failure",
        "failure",
        "10.9.9.9",
    )]));
    wait_for("threshold alert", || !sink.alerts().is_empty());
    let a = &sink.alerts()[0];
    assert_eq!(
        (a.plugin.as_str(), a.rule.as_str()),
        ("example-threshold", "failures-per-ip")
    );
    assert_eq!(a.evidence, vec![1, 2]);
    assert_eq!(a.summary, "2 failures from 10.9.9.9 within 60s");
    host.shutdown();

    // A TOML file beside the plugin wins over the host config.
    std::fs::write(plugins.join("libexample_threshold.toml"), "threshold = 0\n").unwrap();
    let sink = Recorder::new();
    let mut cfg = config(tmp.path(), false);
    cfg.plugin_config.insert(
        "example-threshold".into(),
        serde_json::json!({"threshold": 2}),
    );
    let host = PluginHost::start(cfg, sink.clone()).unwrap();
    assert!(sink
        .failure_for(&so)
        .unwrap()
        .contains("threshold must be at least 1"));
    host.shutdown();

    // Backtest: historical batches, historical alert times, nothing stored.
    let history: Vec<Vec<_>> = (0..4)
        .map(|b| {
            (0..3)
                .map(|i| {
                    ev(
                        b * 3 + i,
                        "auth.login.failure",
                        "failure",
                        &format!("10.0.0.{b}"),
                    )
                })
                .collect()
        })
        .collect();
    let alerts = plugin_host::backtest(
        &so,
        &serde_json::json!({"threshold": 3}),
        history.into_iter(),
    )
    .unwrap();
    assert_eq!(alerts.len(), 4);
    assert_eq!(alerts[1].client_ip.as_deref(), Some("10.0.0.1"));
    assert_eq!(alerts[1].evidence, vec![3, 4, 5]);
    assert_eq!(alerts[1].time_us, ev(5, "", "", "").time_us);
    let err = plugin_host::backtest(
        &so,
        &serde_json::json!({"threshold": "x"}),
        std::iter::empty(),
    )
    .unwrap_err();
    assert!(matches!(err, LoadError::CreateFailed { .. }), "{err}");
}

#[test]
fn start_refuses_a_missing_plugin_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let err = PluginHost::start(config(tmp.path(), false), Recorder::new())
        .err()
        .unwrap();
    assert!(err.to_string().starts_with("plugin folder"), "{err}");
    let _ = Arc::new(());
}
