//! The shape of people's clients. Machines are endless; the clients people
//! read mail and follow links with are few: browsers and their webviews,
//! in-app browsers and apps, and mail clients. This module says whether a
//! user agent has one of their shapes, so that one no list knows and that
//! has none of them can be called a machine (`ua:unknown-agent`, when the
//! rule file's `unknown_agents` asks for it).
//!
//! Named mail clients whose user agents look like nothing else (Outlook's
//! `Microsoft Office/…`, `Airmail 1.4 …`, `The Bat! …`) are rules of their
//! own in `data/scanners.toml`, with the verdict `human`; they are matched
//! before this and before the crawler list. This module only knows shapes.

use std::sync::LazyLock;

use regex::Regex;

use super::Device;

/// Browser-engine user agents with a platform in their first comment
/// (`Mozilla/5.0 (Windows NT 10.0; …`, `(iPhone; CPU iPhone OS …`,
/// `(Linux; Android 14; …`, TVs, consoles, feature phones), Opera's old
/// form, and apps that name the device or OS they run on (iOS apps on
/// CFNetwork, Android apps on Dalvik, `App/1.0 (iPhone; iOS 17.5; …)`).
static SHAPES: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        // Case-insensitive: some real clients write mozilla/5.0 (linux; …).
        // Word boundaries are ASCII ones, which the lazy DFA runs.
        r"(?i)^(?:mozilla/[45]\.0 ?\((?:windows|macintosh|x11|linux|android|iphone|ipad|ipod|cros|mobile|tablet|",
        r"blackberry|bb10|playbook|symbian|symbianos|smart-tv|smarttv|web0s|webos|playstation|nintendo|fuchsia|",
        r"kaios|maemo|meego|wayland|unknown; linux|u;|series|windows phone|compatible; msie|compatible; konqueror|",
        r"ipados|tizen|hbbtv|directfb|qtembedded|nokia)",
        r"|opera/[0-9.]+ \(",
        // iOS and macOS apps on Apple's networking stack, Android apps.
        r"|[^ /]+/[^ ]+ (?:\([^)]*\) )?cfnetwork/[0-9.]+ darwin/",
        r"|dalvik/[0-9.]+ \(linux; u; android",
        r")",
        // Television platforms.
        r"|smarttv|roku|appletv|hbbtv",
        // An app naming the device or system it runs on in a comment.
        r"|\((?:[^)]*[;,] ?)?(?:iphone|ipad|ios|ipados|android|mac ?os(?: x)?|macos|windows nt|tvos|watchos)[ ;/0-9_.]",
        // Feature phones and their browsers.
        r"|up\.browser|profile/midp|midp-[0-9]|ucweb|ucbrowser|opera mini|netfront|obigo|j2me",
        // Any Mozilla-style user agent with a browser engine.
        r"|^mozilla/[0-9.]+.*(?-u:\b)(?:applewebkit|gecko|trident|presto|khtml)(?-u:\b)",
        // Old, small and exotic browsers and platforms.
        r"|(?-u:\b)(?:maui|mre/|wap[ _-]?browser|dorado|teleca|brew/|bada/|polaris|dolfin|opera|opr/|lynx/|dillo/|",
        r"libwww-fm|amiga|beos|haiku|risc os|palmos|palm-|nokia|samsung-|browser/|hotjava|webtv|crkey|dtv\))",
        r"|mosaic/|[._]browser(?-u:\b)|openharmony|harmonyos",
        // Text-mode browsers, browsers that call themselves one by name
        // (`Maemo Browser`, `Avant Browser;`, `PrivacyBrowser/1.0`), and
        // old browsers known by a bare name and version.
        r"|^(?:w3m|e?links2?)[/ (]|(?:^|[ ;(])[a-z]* ?browser(?: [0-9]|/[0-9]|;|$)|internet explorer|[a-z]+ explorer [0-9]",
        r"|^(?:firefox|midori|omniweb|bonecho)[ /]?[0-9]|icab [0-9]|[ _]mosaic[ /][0-9]",
        // Browsers that drop the Mozilla/5.0 prefix (DuckDuckGo's Android
        // browser), and two museum browsers (W3C's Amaya, Inferno's Charon).
        r"|^applewebkit/[0-9.]+ \(khtml, like gecko\)|^amaya/[0-9]|\(charon; inferno\)",
        // Apple's system networking on behalf of Safari, Mail and apps.
        r"|(?-u:\b)network/[0-9.]+ (?:ios|ipados|macos|watchos|tvos|visionos)/",
        // App names, frameworks and systems of phones and desktops.
        r"|-ios-|itunes/|alamofire/|\(win(?:xp|7|8|10|11) x(?:64|86)\)",
    ))
    .expect("the people's-client shapes compile (tested)")
});

/// Whether the user agent has the shape of a person's client: woothee
/// reads it as a pc, phone or appliance, or it has one of [`SHAPES`].
pub fn looks_like_a_person(user_agent: &str, device: Option<&Device>) -> bool {
    let woothee_knows = device
        .and_then(|d| d.category.as_deref())
        .is_some_and(|c| matches!(c, "pc" | "smartphone" | "mobilephone" | "appliance"));
    woothee_knows || SHAPES.is_match(user_agent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn people_have_shapes_and_machines_mostly_do_not() {
        let people = [
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/132.0.0.0 Safari/537.36",
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_3 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
            "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36",
            "Opera/9.80 (J2ME/MIDP; Opera Mini/9.80 (S60; SymbOS; Opera Mobi/23.348; U; en) Presto/2.5.25 Version/10.54",
            "Yahoo%20Mail/49268 CFNetwork/1121.2.2 Darwin/19.3.0",
            "Dalvik/2.1.0 (Linux; U; Android 11; SM-A515F Build/RP1A.200720.012)",
            "Superhuman/3.10.1 (com.superhuman.Superhuman; build:11343; iOS 17.5.1) Alamofire/5.9.0",
            "Instagram 123.0.0.21.115 (iPhone11,8; iOS 13_3; en_US; en-US; scale=2.00; 828x1792; 190542906)",
            "w3m/0.52",
            "ELinks (0.4.3; NetBSD 3.0.2PATCH sparc64; 141x19)",
            "Maemo Browser",
            "PrivacyBrowser/1.0",
            "Deepnet Explorer 1.5.3; Smart 2x2; Avant Browser; .NET CLR 2.0.50727; InfoPath.1)",
            "Midori 0.1.10",
            "AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/118.0.0.0 Mobile DuckDuckGo/5 Safari/537.36",
            "com.apple.WebKit.Networking/21623.1.14.11.9 Network/5569.60.39.0.3 macOS/26.2",
            "NetworkingExtension/8619.1.26.30.5 Network/4277.2.5 iOS/18.0",
        ];
        for ua in people {
            assert!(looks_like_a_person(ua, None), "{ua}");
        }
        let machines = [
            "Blackbox Exporter/0.24.0",
            "Grafana/11.1.0",
            "collectd/5.5.1",
            "PycURL/7.43.0 libcurl/7.47.0 GnuTLS/3.4.10 zlib/1.2.8",
            "Mozilla/5.0 (compatible; SomeNewFetcher/1.0)",
            "Norton-Safeweb",
            "Browsershots",
        ];
        for ua in machines {
            assert!(!looks_like_a_person(ua, None), "{ua}");
        }
    }
}
