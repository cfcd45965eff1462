//! [`Category`]: what kind of agent a user agent names, put on every event
//! as `agent_category` so consumers can draw their own lines (count link
//! previews, drop monitors, …) beyond the four verdicts.
//!
//! It says what the user-agent string is, nothing more: a browser user
//! agent fetching from a security vendor's network is still `browser`,
//! while the verdict (which also reads the network and behaviour) says
//! `scanner`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Category {
    /// A web browser, its webview or an in-app browser.
    Browser,
    /// A person's mail client (Apple Mail, Outlook, Thunderbird, Gmail app, …).
    MailClient,
    /// An image or privacy proxy fetching for a reader (Gmail, Yahoo, Apple MPP).
    ImageProxy,
    /// Security gateways, URL scanners, vulnerability and port scanners.
    SecurityScanner,
    /// Chat and social apps unfurling a link (Slackbot, facebookexternalhit).
    LinkPreview,
    SearchEngine,
    /// Uptime, synthetic and performance monitors, link checkers.
    Monitoring,
    /// HTTP client libraries and command-line tools.
    HttpLibrary,
    /// Crawlers collecting pages for AI models.
    AiCrawler,
    /// AI assistants fetching a page because a person asked about it.
    AiAssistant,
    FeedReader,
    /// Headless and scripted browsers, AI browsing agents.
    BrowserAutomation,
    Seo,
    Advertising,
    Archiver,
    Academic,
    /// A machine that says so (a bot, a crawler, a contact URL) and no more.
    Crawler,
    Unknown,
}

impl Category {
    pub const ALL: [Category; 18] = [
        Category::Browser,
        Category::MailClient,
        Category::ImageProxy,
        Category::SecurityScanner,
        Category::LinkPreview,
        Category::SearchEngine,
        Category::Monitoring,
        Category::HttpLibrary,
        Category::AiCrawler,
        Category::AiAssistant,
        Category::FeedReader,
        Category::BrowserAutomation,
        Category::Seo,
        Category::Advertising,
        Category::Archiver,
        Category::Academic,
        Category::Crawler,
        Category::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Category::Browser => "browser",
            Category::MailClient => "mail-client",
            Category::ImageProxy => "image-proxy",
            Category::SecurityScanner => "security-scanner",
            Category::LinkPreview => "link-preview",
            Category::SearchEngine => "search-engine",
            Category::Monitoring => "monitoring",
            Category::HttpLibrary => "http-library",
            Category::AiCrawler => "ai-crawler",
            Category::AiAssistant => "ai-assistant",
            Category::FeedReader => "feed-reader",
            Category::BrowserAutomation => "browser-automation",
            Category::Seo => "seo",
            Category::Advertising => "advertising",
            Category::Archiver => "archiver",
            Category::Academic => "academic",
            Category::Crawler => "crawler",
            Category::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for Category {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_agree_with_serde() {
        for c in Category::ALL {
            assert_eq!(serde_json::to_value(c).unwrap(), serde_json::Value::from(c.as_str()));
        }
    }
}
