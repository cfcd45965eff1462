//! The configuration as a user meets it: defaults, the environment over the
//! file, errors that name what was written and never show a secret.

use std::collections::HashMap;

use super::*;

fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    move |k| map.get(k).cloned()
}

fn key() -> String {
    crate::keys::Key::generate_entry(&crate::keys::KeyId::new("k1").unwrap())
}

fn from_toml(text: &str) -> Result<Config, ConfigError> {
    validate(RawConfig::from_toml(text).unwrap(), &Origins::default())
}

#[test]
fn defaults_make_a_development_ring_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!("data_dir = {:?}", dir.path().to_str().unwrap());
    let config = from_toml(&toml).unwrap();
    assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(config.events_file, dir.path().join("events.jsonl"));
    // Validation touches no file: the ring is made when it is loaded.
    assert!(!dir.path().join("dev-keys").exists());
    let (ring, source) = config.keys.load().unwrap();
    assert!(matches!(source, KeySource::Development(_)));
    // The second start reuses the same ring, so old dev links keep working.
    let (again, _) = from_toml(&toml).unwrap().keys.load().unwrap();
    assert_eq!(again.sealing().id().as_str(), "dev");
    assert_eq!(ring.sealing().id(), again.sealing().id());
    let text = std::fs::read_to_string(dir.path().join("dev-keys")).unwrap();
    assert!(text.contains("never use it in production"));
}

#[test]
fn environment_overrides_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("waymark.toml");
    std::fs::write(&file, "listen = \"0.0.0.0:80\"\nqueue_capacity = 5").unwrap();
    let c =
        crate::config::load(Some(&file), env(&[("WAYMARK_LISTEN", "127.0.0.1:9"), ("WAYMARK_KEYS", &key())]))
            .unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:9");
    assert_eq!(c.queue_capacity, 5);
    assert!(matches!(c.keys, KeySpec::Inline { .. }));
}

/// A bad value is named as the user wrote it: the variable, or the key
/// in the named file; a secret's value is never shown.
#[test]
fn bad_settings_are_named_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("w.toml");
    let cases: Vec<(&str, Vec<(&str, &str)>, &str)> = vec![
        ("", vec![("WAYMARK_LISTEN", "localhost")], "setting WAYMARK_LISTEN = \"localhost\" is invalid"),
        ("listen = \"localhost\"", vec![], "setting listen (in "),
        ("", vec![("WAYMARK_QUEUE_CAPACITY", "lots")], "setting WAYMARK_QUEUE_CAPACITY = \"lots\""),
        ("", vec![("WAYMARK_QUEUE_CAPACITY", "0")], "setting WAYMARK_QUEUE_CAPACITY = \"0\""),
        (
            "",
            vec![("WAYMARK_SHUTDOWN_DELAY_MS", "600001")],
            "setting WAYMARK_SHUTDOWN_DELAY_MS = \"600001\" is invalid: expected 0 to 600000 milliseconds",
        ),
        ("queue_capacity = 0", vec![], "setting queue_capacity (in "),
        (
            "",
            vec![("WAYMARK_FALLBACK_URL", "javascript:x")],
            "setting WAYMARK_FALLBACK_URL = \"javascript:x\"",
        ),
        (
            "",
            vec![("WAYMARK_TRUSTED_PROXIES", "10.0.0.0/33")],
            "setting WAYMARK_TRUSTED_PROXIES = \"10.0.0.0/33\"",
        ),
        ("", vec![("WAYMARK_LOG_FORMAT", "xml")], "expected human or json"),
        ("", vec![("WAYMARK_CLIENT_IP_HEADER", "x-real-ip")], "expected x-forwarded-for or forwarded"),
        ("", vec![("WAYMARK_KEYS", "k1:nope")], "setting WAYMARK_KEYS is invalid: the secret of key \"k1\""),
        (
            "",
            vec![("WAYMARK_ADMIN_LISTEN", "127.0.0.1:0"), ("WAYMARK_ADMIN_TOKEN", "short")],
            "WAYMARK_ADMIN_TOKEN = \"<redacted>\"",
        ),
        // Refused without an admin listener too.
        ("", vec![("WAYMARK_ADMIN_TOKEN", "short")], "WAYMARK_ADMIN_TOKEN = \"<redacted>\""),
        (
            "",
            vec![("WAYMARK_IP_MODE", "hashed"), ("WAYMARK_IP_HASH_KEY", "x")],
            "WAYMARK_IP_HASH_KEY = \"<redacted>\"",
        ),
    ];
    for (toml, vars, want) in cases {
        std::fs::write(&file, toml).unwrap();
        let err = crate::config::load(Some(&file), env(&vars)).unwrap_err().to_string();
        assert!(err.contains(want), "{toml:?} {vars:?}: {err}");
    }
}

/// Issue 18: no value of a secret-bearing setting reaches an error.
#[test]
fn secrets_never_reach_an_error() {
    let secret = "9J0fQm4rQm4rQm4rQm4rQm4rQm4rQm4rQm4rQm4rQm4";
    let cases: Vec<Vec<(&str, String)>> = vec![
        vec![("WAYMARK_KEYS", format!("{secret}:k1"))],
        vec![("WAYMARK_KEYS", format!("k1={secret}"))],
        vec![("WAYMARK_KEYS", format!("k1:{secret}x"))],
        vec![("WAYMARK_KAFKA_PROPERTIES", format!("sasl.password{secret}"))],
        vec![("WAYMARK_ADMIN_LISTEN", "127.0.0.1:0".into()), ("WAYMARK_ADMIN_TOKEN", format!("{secret} x"))],
        vec![("WAYMARK_IP_MODE", "hashed".into()), ("WAYMARK_IP_HASH_KEY", format!("{secret}!"))],
    ];
    for vars in cases {
        let pairs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let err = crate::config::load(None, env(&pairs)).unwrap_err().to_string();
        assert!(!err.contains(&secret[..6]), "{vars:?} printed {err}");
    }
    let toml = format!("[[tenants]]\nname = \"a\"\nhosts = [\"t.a.com\"]\nkeys = [\"{secret}:k1\"]\n");
    let err = from_toml(&toml).unwrap_err().to_string();
    assert!(!err.contains(&secret[..6]) && err.contains("tenants[a].keys"), "{err}");
}

#[test]
fn admin_tokens_lose_a_trailing_new_line() {
    let c = crate::config::load(
        None,
        env(&[("WAYMARK_ADMIN_LISTEN", "127.0.0.1:0"), ("WAYMARK_ADMIN_TOKEN", "0123456789abcdef0123\n")]),
    )
    .unwrap();
    assert_eq!(c.admin.unwrap().token.as_deref(), Some("0123456789abcdef0123"));
}

#[test]
fn unknown_file_settings_are_refused() {
    let err = RawConfig::from_toml("listne = \"x\"").unwrap_err();
    assert!(err.contains("unknown field `listne`"), "{err}");
}

#[test]
fn key_files_readable_by_others_are_refused_at_start_up() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys");
    std::fs::write(&path, key()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let toml = format!("keys_file = {:?}", path.to_str().unwrap());
    let err = from_toml(&toml).unwrap().keys.load().unwrap_err();
    assert!(err.to_string().contains("mode 644"), "{err}");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(from_toml(&toml).unwrap().keys.load().is_ok());
}

#[test]
fn tenants_map_their_hosts_normalised() {
    let toml = format!(
        "keys = [\"{}\"]\n[[tenants]]\nname = \"a\"\nhosts = [\"T.Sender-A.com.\", \"bücher.example\"]\nfallback_url = \"https://sender-a.com/\"",
        key()
    );
    let c = from_toml(&toml).unwrap();
    let t = &c.tenants[0];
    assert_eq!(t.name, "a");
    assert_eq!(t.hosts, ["t.sender-a.com", "xn--bcher-kva.example"]);
    assert_eq!(t.fallback_url.as_ref().unwrap().as_str(), "https://sender-a.com/");
    let twice = "[[tenants]]\nname = \"a\"\nhosts = [\"t.a.com\"]\n[[tenants]]\nname = \"b\"\nhosts = [\"T.A.COM.\"]\n";
    assert!(from_toml(twice).unwrap_err().to_string().contains("a host served by one tenant only"));
}

/// `judge = "kafka"` needs brokers and a hits topic of its own; the
/// defaults are the documented ones.
#[test]
fn the_kafka_judge_is_configured_or_refused_by_name() {
    let kafka = [("WAYMARK_JUDGE", "kafka"), ("WAYMARK_KAFKA_BROKERS", "127.0.0.1:9092")];
    let c = crate::config::load(None, env(&kafka)).unwrap();
    let want = HitsSettings { topic: "waymark.hits".into(), group: "waymark-judge".into(), partitions: 6 };
    assert_eq!(c.judge, JudgeMode::Kafka(want));
    assert_eq!(crate::config::load(None, env(&[])).unwrap().judge, JudgeMode::Local);
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (
            vec![("WAYMARK_JUDGE", "remote")],
            "setting WAYMARK_JUDGE = \"remote\" is invalid: expected local or kafka",
        ),
        (vec![("WAYMARK_JUDGE", "kafka")], "expected local, or kafka with kafka.brokers set"),
        (
            [&kafka[..], &[("WAYMARK_KAFKA_HITS_TOPIC", "waymark.events")]].concat(),
            "WAYMARK_KAFKA_HITS_TOPIC = \"waymark.events\" is invalid: expected a topic other than the events'",
        ),
        ([&kafka[..], &[("WAYMARK_KAFKA_HITS_TOPIC", "a b")]].concat(), "WAYMARK_KAFKA_HITS_TOPIC = \"a b\""),
        (
            [&kafka[..], &[("WAYMARK_KAFKA_HITS_PARTITIONS", "0")]].concat(),
            "WAYMARK_KAFKA_HITS_PARTITIONS = \"0\"",
        ),
        ([&kafka[..], &[("WAYMARK_KAFKA_JUDGE_GROUP", " ")]].concat(), "WAYMARK_KAFKA_JUDGE_GROUP = \" \""),
    ];
    for (vars, want) in cases {
        let err = crate::config::load(None, env(&vars)).unwrap_err().to_string();
        assert!(err.contains(want), "{vars:?}: {err}");
    }
}
