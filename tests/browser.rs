//! The unsubscribe page in a real browser (Debian's chromium, driven by
//! playwright-core from tests/browser): a person opens it, presses the
//! button, sees the confirmation, and the event is written. Screenshots go
//! to target/test-artifacts/.

mod support;

use std::path::Path;
use std::process::Command;

use support::*;
use waymark::token::{self, Claims, Target};

fn tools_present() -> bool {
    let chromium = Path::new("/usr/bin/chromium").exists();
    let playwright =
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/node_modules/playwright-core"))
            .exists();
    let node = Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success());
    chromium && playwright && node
}

#[test]
fn a_person_unsubscribes_in_a_real_browser() {
    if !tools_present() {
        assert!(
            std::env::var("CI").is_err(),
            "CI must run the browser test: chromium, node or playwright-core is missing"
        );
        eprintln!(
            "SKIPPED: needs /usr/bin/chromium, node and `npm ci` in tests/browser (scripts/test installs them)"
        );
        return;
    }
    let keys = key_entry("k1");
    let svc = Service::start(&keys, &[]);
    let claims = Claims { target: Target::Unsubscribe, ..open_claims("m-browser") };
    let url = format!("http://{}/u/{}", svc.addr, token::seal(&ring(&keys), &claims).unwrap());
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("../test-artifacts");
    std::fs::create_dir_all(&shots).unwrap();
    let out = Command::new("node")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/unsubscribe.mjs"))
        .arg(&url)
        .arg(&shots)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "browser run failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(shots.join("unsubscribed.png").exists());
    let events = svc.events(1);
    assert_eq!(events.len(), 1, "the page view recorded nothing, the button one event");
    assert_eq!(events[0]["type"], "email.unsubscribed");
    assert_eq!(events[0]["data"]["object"]["counted"], true);
    assert!(events[0]["data"]["object"]["user_agent"].as_str().unwrap().contains("Chrome"));
}
