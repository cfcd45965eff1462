//! The few pages a person may ever see of waymark. Each is complete HTML
//! with inline style and no external assets, readable on a phone, and
//! served with a policy that forbids scripts and framing.

/// One page: the shared head and style, a title and a body.
macro_rules! page {
    ($title:literal, $extra_style:literal, $body:literal) => {
        concat!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
            "<meta name=\"robots\" content=\"noindex\">",
            "<title>",
            $title,
            "</title>",
            "<style>body{font:17px/1.5 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;",
            "padding:0 1rem;background:#f6f7f9;color:#1d2330}",
            "main{max-width:32rem;margin:12vh auto;padding:2rem 1.5rem;background:#fff;",
            "border-radius:12px;box-shadow:0 1px 4px rgba(0,0,0,.08)}",
            "h1{font-size:1.35rem;margin:0 0 .75rem}p{margin:.5rem 0}",
            $extra_style,
            "</style></head><body><main>",
            $body,
            "</main></body></html>\n"
        )
    };
}

/// Shown for a click link that cannot be trusted (tampered, expired, from a
/// retired key, or for another domain). It names no destination: a bad
/// token must never lead anywhere.
pub const BAD_LINK: &str = page!(
    "This link is not valid",
    "",
    "<h1>This link is not valid</h1>\
     <p>The link you followed is damaged, has expired, or was not made for this site.</p>\
     <p>If you copied it from an email, make sure you copied all of it, or open the email again \
     and follow the link from there.</p>"
);

/// Shown for `GET /u/{token}`: one button that POSTs the RFC 8058 body
/// back to the same URL. Opening the page changes nothing.
pub const UNSUBSCRIBE: &str = page!(
    "Unsubscribe",
    "form{margin-top:1.25rem}button{font:inherit;font-weight:600;color:#fff;background:#1d4ed8;border:0;\
     border-radius:8px;padding:.8rem 1.4rem;min-height:44px;cursor:pointer;width:100%}\
     button:focus-visible{outline:3px solid #93c5fd;outline-offset:2px}",
    "<h1 id=\"t\">Unsubscribe from these emails?</h1>\
     <p>You will stop receiving this kind of email at this address.</p>\
     <form method=\"post\" aria-labelledby=\"t\">\
     <input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">\
     <button type=\"submit\">Unsubscribe</button></form>"
);

/// Shown after a successful unsubscribe.
pub const UNSUBSCRIBED: &str = page!(
    "You are unsubscribed",
    "",
    "<h1 role=\"status\">You are unsubscribed</h1>\
     <p>You will not receive these emails any more. You can close this page.</p>"
);

/// Shown when an unsubscribe could not be recorded (answered 503): it
/// must never claim success, and says what to do.
pub const NOT_UNSUBSCRIBED: &str = page!(
    "Unsubscribe did not work",
    "",
    "<h1 role=\"alert\">Your unsubscribe did not go through</h1>\
     <p>We could not record it just now, so you are still subscribed.</p>\
     <p>Please try again in a minute, by reloading this page or following the link in the email again.</p>"
);

/// Content-Security-Policy for every page: nothing but its own inline style
/// and, for forms, posting back to itself.
pub const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
