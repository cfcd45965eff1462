//! The few pages a person may ever see of waymark. Each is complete HTML
//! with inline style and no external assets, readable on a phone, and
//! served with a policy that forbids scripts and framing.

/// Shown for a click link that cannot be trusted (tampered, expired, from a
/// retired key, or for another domain). It names no destination: a bad
/// token must never lead anywhere.
pub const BAD_LINK: &str = concat!(
    "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
    "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
    "<meta name=\"robots\" content=\"noindex\">",
    "<title>This link is not valid</title>",
    "<style>body{font:17px/1.5 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;",
    "background:#f6f7f9;color:#1d2330}main{max-width:32rem;margin:12vh auto;padding:2rem 1.5rem;",
    "background:#fff;border-radius:12px;box-shadow:0 1px 4px rgba(0,0,0,.08)}",
    "h1{font-size:1.35rem;margin:0 0 .75rem}p{margin:.5rem 0}</style></head>",
    "<body><main><h1>This link is not valid</h1>",
    "<p>The link you followed is damaged, has expired, or was not made for this site.</p>",
    "<p>If you copied it from an email, make sure you copied all of it, or open the email again ",
    "and follow the link from there.</p></main></body></html>\n",
);

/// Content-Security-Policy for every page: nothing but its own inline style
/// and, for forms, posting back to itself.
pub const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
