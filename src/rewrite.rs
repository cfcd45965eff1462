//! Instrumenting an HTML email: every trackable link becomes a click URL,
//! the pixel goes right before `</body>`, `|*UNSUBSCRIBE*|` becomes the
//! unsubscribe URL, one hidden honeypot link is added for the classifier,
//! and the List-Unsubscribe headers are made. Built on lol_html, a
//! streaming rewriter: everything it is not told to touch passes through
//! byte for byte (comments, Outlook conditionals, entities, broken markup).
//!
//! This module mints tokens and rewrites text; it never does I/O.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use lol_html::html_content::ContentType;
use lol_html::{HtmlRewriter, Settings, doc_text, element, end};

use crate::destination::Destination;
use crate::keys::KeyRing;
use crate::token::{self, Claims, Link, SealError, Target};

/// The merge tag replaced by the unsubscribe URL (the common ESP spelling).
pub const UNSUBSCRIBE_TAG: &str = "|*UNSUBSCRIBE*|";

/// What to track in one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Switches {
    pub opens: bool,
    pub clicks: bool,
    pub unsubscribe: bool,
}

impl Default for Switches {
    fn default() -> Self {
        Switches { opens: true, clicks: true, unsubscribe: true }
    }
}

/// One message to instrument.
#[derive(Debug, Clone)]
pub struct Message {
    /// The tracking domain's base, e.g. `https://t.sender.example`.
    pub base_url: Destination,
    pub tenant: String,
    pub message_id: String,
    pub recipient: Option<String>,
    pub sent_at: u64,
    pub tags: Vec<String>,
    pub meta: Vec<(String, String)>,
    pub switches: Switches,
    /// Hosts whose links are already tracking links (never wrapped twice).
    pub tracking_hosts: Vec<String>,
    /// An address for `List-Unsubscribe`'s mailto alternative.
    pub unsubscribe_mailto: Option<String>,
    /// When the URLs stop working (Unix seconds); never when `None`.
    pub expires_at: Option<u64>,
}

#[derive(Debug)]
pub struct Instrumented {
    pub html: Vec<u8>,
    /// Headers to add to the message, in order.
    pub headers: Vec<(String, String)>,
    /// Links rewritten to click URLs (the honeypot not included).
    pub links: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    #[error("cannot seal a tracking URL: {0}")]
    Seal(#[from] SealError),
    #[error("the HTML could not be rewritten: {0}")]
    Html(String),
    #[error(
        "the message has more than {MAX_LINKS} links to track: a link's index must fit in a token (mark some data-waymark=\"off\")"
    )]
    TooManyLinks,
    #[error("unsubscribe mailto {0:?} is not an email address")]
    Mailto(String),
}

impl Message {
    fn claims(&self, target: Target) -> Claims {
        Claims {
            target,
            tenant: self.tenant.clone(),
            message_id: self.message_id.clone(),
            recipient: self.recipient.clone(),
            sent_at: self.sent_at,
            expires_at: self.expires_at,
            tags: self.tags.clone(),
            meta: self.meta.clone(),
        }
    }

    fn base(&self) -> &str {
        self.base_url.as_str().trim_end_matches('/')
    }

    /// One tracking URL of this message.
    pub fn url(&self, ring: &KeyRing, target: Target) -> Result<String, SealError> {
        let prefix = match target {
            Target::Open => "o",
            Target::Click(_) => "c",
            Target::Unsubscribe => "u",
        };
        let token = token::seal(ring, &self.claims(target))?;
        let suffix = if prefix == "o" { ".gif" } else { "" };
        Ok(format!("{}/{prefix}/{token}{suffix}", self.base()))
    }

    /// Whether `url` already points at a tracking domain.
    fn is_tracking(&self, url: &Destination) -> bool {
        let host = url::Url::parse(url.as_str()).ok().and_then(|u| u.host_str().map(str::to_ascii_lowercase));
        let base = url::Url::parse(self.base_url.as_str())
            .ok()
            .and_then(|u| u.host_str().map(str::to_ascii_lowercase));
        host.is_some_and(|h| {
            Some(&h) == base.as_ref() || self.tracking_hosts.iter().any(|t| t.eq_ignore_ascii_case(&h))
        })
    }
}

/// What a link's `href` is, for rewriting.
#[derive(Debug, PartialEq, Eq)]
pub enum Href {
    /// An absolute http(s) URL to track.
    Track(Destination),
    /// Left as it is: mailto:, tel:, anchors, relative or invalid URLs,
    /// tracking links, merge tags.
    Keep,
}

/// Classifies an `href` as written in HTML (entities not yet decoded).
pub fn href(raw: &str) -> Href {
    let decoded = html_escape::decode_html_entities(raw.trim());
    if decoded.contains(UNSUBSCRIBE_TAG) {
        return Href::Keep;
    }
    let lower = decoded.to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        return Href::Keep;
    }
    Destination::parse(&decoded).map_or(Href::Keep, Href::Track)
}

const WRITE_CHUNK: usize = 4096;

/// The link index of the honeypot: past any real link.
pub const TRAP_INDEX: u16 = u16::MAX;

/// The most links one message may track: indices 0 to 65,534, below the
/// honeypot's. Past it, instrumenting fails rather than give two links one
/// index.
pub const MAX_LINKS: usize = TRAP_INDEX as usize;

/// The honeypot link and the pixel, as switched on.
fn tail(ring: &KeyRing, msg: &Message) -> Result<String, SealError> {
    let mut out = String::new();
    if msg.switches.clicks {
        // It leads to the tracking domain itself: no person ever gets there.
        let trap = Target::Click(Link { index: TRAP_INDEX, url: msg.base_url.clone(), trap: true });
        // Invisible, out of the tab order, hidden from screen readers and
        // from Outlook: only a machine follows it.
        out.push_str(&format!(
            "<a href=\"{}\" style=\"display:none!important;mso-hide:all;font-size:0;line-height:0;max-height:0;overflow:hidden\" aria-hidden=\"true\" tabindex=\"-1\"></a>",
            msg.url(ring, trap)?
        ));
    }
    if msg.switches.opens {
        out.push_str(&format!(
            "<img src=\"{}\" width=\"1\" height=\"1\" alt=\"\" style=\"display:block;width:1px;height:1px;border:0\">",
            msg.url(ring, Target::Open)?
        ));
    }
    Ok(out)
}

/// Instruments `html` for `msg`, sealing with `ring`.
pub fn instrument(ring: &KeyRing, msg: &Message, html: &[u8]) -> Result<Instrumented, RewriteError> {
    let sw = msg.switches;
    let unsubscribe_url = if sw.unsubscribe { Some(msg.url(ring, Target::Unsubscribe)?) } else { None };
    let error: Rc<RefCell<Option<RewriteError>>> = Rc::default();
    let links = Rc::new(Cell::new(0u16));
    let body_closed = Rc::new(Cell::new(false));
    let text_buffer: Rc<RefCell<String>> = Rc::default();

    // The tail: honeypot and pixel, before </body> or at the very end.
    let tail = Rc::new(RefCell::new(Some(tail(ring, msg)?)));

    let mut output = Vec::with_capacity(html.len() + 1024);
    {
        let (links2, err2, unsub_a) = (links.clone(), error.clone(), unsubscribe_url.clone());
        let (tail_body, closed) = (tail.clone(), body_closed.clone());
        let (tail_end, closed_end) = (tail.clone(), body_closed.clone());
        let (buffer, unsub_t) = (text_buffer.clone(), unsubscribe_url.clone());
        let msg_a = msg.clone();
        let mut rewriter = HtmlRewriter::new(
            Settings::new()
                .append_element_content_handler(element!("a[href]", move |el| {
                    let raw = el.get_attribute("href").unwrap_or_default();
                    if let Some(url) = unsub_a.as_deref().filter(|_| raw.contains(UNSUBSCRIBE_TAG)) {
                        el.set_attribute("href", &raw.replace(UNSUBSCRIBE_TAG, url))?;
                        return Ok(());
                    }
                    let off = el.get_attribute("data-waymark").is_some_and(|v| v.eq_ignore_ascii_case("off"));
                    if !sw.clicks || off {
                        return Ok(());
                    }
                    let Href::Track(dest) = href(&raw) else { return Ok(()) };
                    if msg_a.is_tracking(&dest) {
                        return Ok(());
                    }
                    let index = links2.get();
                    if index == TRAP_INDEX {
                        *err2.borrow_mut() = Some(RewriteError::TooManyLinks);
                        return Ok(());
                    }
                    match msg_a.url(ring, Target::Click(Link { index, url: dest, trap: false })) {
                        Ok(u) => {
                            el.set_attribute("href", &u)?;
                            links2.set(index.saturating_add(1));
                        }
                        Err(e) => *err2.borrow_mut() = Some(e.into()),
                    }
                    Ok(())
                }))
                .append_element_content_handler(element!("body", move |el| {
                    let tail = tail_body.clone();
                    let closed = closed.clone();
                    if let Some(handlers) = el.end_tag_handlers() {
                        let handler: lol_html::EndTagHandler<'static> = Box::new(move |end| {
                            if let Some(tail) = tail.borrow_mut().take() {
                                end.before(&tail, ContentType::Html);
                            }
                            closed.set(true);
                            Ok(())
                        });
                        handlers.push(handler);
                    }
                    Ok(())
                }))
                // Merge tags can be split across text chunks: hold a text
                // node's chunks until its last one, then write it whole.
                .append_document_content_handler(doc_text!(move |chunk| {
                    let Some(url) = unsub_t.as_deref() else { return Ok(()) };
                    let mut buf = buffer.borrow_mut();
                    buf.push_str(chunk.as_str());
                    if chunk.last_in_text_node() {
                        let whole = std::mem::take(&mut *buf).replace(UNSUBSCRIBE_TAG, url);
                        chunk.replace(&whole, ContentType::Html);
                    } else {
                        chunk.remove();
                    }
                    Ok(())
                }))
                .append_document_content_handler(end!(move |end| {
                    if !closed_end.get()
                        && let Some(tail) = tail_end.borrow_mut().take()
                    {
                        end.append(&tail, ContentType::Html);
                    }
                    Ok(())
                })),
            |c: &[u8]| output.extend_from_slice(c),
        );
        // Fed in pieces, as a stream would be; the handlers cope with any split.
        for piece in html.chunks(WRITE_CHUNK) {
            rewriter.write(piece).map_err(|e| RewriteError::Html(e.to_string()))?;
        }
        rewriter.end().map_err(|e| RewriteError::Html(e.to_string()))?;
    }
    if let Some(e) = error.borrow_mut().take() {
        return Err(e);
    }

    let mut headers = Vec::new();
    if let Some(url) = &unsubscribe_url {
        let mut value = format!("<{url}>");
        if let Some(mailto) = &msg.unsubscribe_mailto {
            if !mailto.contains('@') || mailto.contains(['<', '>', ',', ' ', '\r', '\n']) {
                return Err(RewriteError::Mailto(mailto.clone()));
            }
            value.push_str(&format!(", <mailto:{mailto}?subject=unsubscribe>"));
        }
        headers.push(("List-Unsubscribe".to_owned(), value));
        headers.push(("List-Unsubscribe-Post".to_owned(), "List-Unsubscribe=One-Click".to_owned()));
    }
    Ok(Instrumented { html: output, headers, links: links.get() as usize })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hrefs_are_told_apart() {
        let track = |s: &str| matches!(href(s), Href::Track(_));
        assert!(track("https://example.com/a?b=1&amp;c=2"));
        assert_eq!(
            href("https://example.com/a?b=1&amp;c=2"),
            Href::Track(Destination::parse("https://example.com/a?b=1&c=2").unwrap())
        );
        assert!(track("  HTTP://EXAMPLE.COM  "));
        for keep in [
            "mailto:a@example.com",
            "tel:+4930123",
            "#top",
            "/relative",
            "javascript:alert(1)",
            "|*UNSUBSCRIBE*|",
            "https://exa mple.com",
            "",
        ] {
            assert_eq!(href(keep), Href::Keep, "{keep:?}");
        }
    }
}
