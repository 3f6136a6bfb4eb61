//! `waping-gateway check-config` on a broken file and with environment overrides: every problem,
//! located, one per line, exit code 2.

use std::process::Command;

fn check_config(file: &std::path::Path, env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_waping-gateway"));
    cmd.args(["check-config", "--config"]).arg(file);
    // The test process's own overrides, if any, must not leak into the checked configuration.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().to_ascii_uppercase().starts_with("WAPING__") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied()).output().unwrap()
}

#[test]
fn three_mistakes_are_three_located_lines_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("gateway.toml");
    std::fs::write(
        &p,
        "[server]\nmax_streams = 0\n[limits]\nburst = \"fast\"\n[log]\ncolour = \"auto\"\n",
    )
    .unwrap();
    let out = check_config(&p, &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let f = p.display().to_string();
    let located: Vec<&str> = err.lines().filter(|l| l.starts_with(&format!("{f}:"))).collect();
    assert_eq!(located.len(), 3, "{err}");
    assert!(
        located[0].starts_with(&format!("{f}:2:1: server.max_streams: ")),
        "{err}"
    );
    assert!(
        located[1].starts_with(&format!("{f}:4:1: limits.burst: ")),
        "{err}"
    );
    assert!(
        located[2].starts_with(&format!("{f}:6:1: log.colour: unknown field")),
        "{err}"
    );
    assert!(err.contains("3 problem(s) in"), "{err}");
}

#[test]
fn environment_overrides_are_applied_reported_and_located() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("gateway.toml");
    std::fs::write(&p, "[limits]\nburst = 0\n").unwrap();
    // The override fixes the file's mistake; the listen address needs no quotes.
    let out = check_config(
        &p,
        &[
            ("WAPING__LIMITS__BURST", "50"),
            ("WAPING__SERVER__LISTEN", "127.0.0.1:7555"),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("QUIC on udp 127.0.0.1:7555"), "{stdout}");
    assert!(
        stdout.contains("2 environment override(s) applied: WAPING__LIMITS__BURST, WAPING__SERVER__LISTEN"),
        "{stdout}"
    );

    let out = check_config(&p, &[("WAPING__LIMITS__BRUST", "50")]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.lines()
            .any(|l| l.starts_with("env WAPING__LIMITS__BRUST: limits.brust: unknown field")),
        "{err}"
    );
    assert!(err.contains(":2:1: limits.burst: 0 is outside"), "{err}");
}
