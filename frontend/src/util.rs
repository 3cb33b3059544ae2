//! Small browser helpers shared by the pages: waiting, downloading a CSV, reading the address,
//! and formatting numbers the same way everywhere.
// The rater-only build uses a part of these.
#![cfg_attr(not(feature = "admin"), allow(dead_code, unused_imports))]

use std::time::Duration;

use wasm_bindgen::JsCast;

/// Resolves after `d` (a browser timer; the app is single-threaded).
pub async fn sleep(d: Duration) {
    let ms = d.as_millis().min(i32::MAX as u128) as i32;
    let p = js_sys::Promise::new(&mut |resolve, _| {
        if let Some(w) = web_sys::window() {
            let _ = w.set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms);
        }
    });
    let _ = wasm_bindgen_futures::JsFuture::from(p).await;
}

/// One CSV field: never a formula a spreadsheet would run (`apl_shared::csv_cell`), quoted when
/// it needs to be (RFC 4180).
fn field(s: &str) -> String {
    let s = apl_shared::csv_cell(s);
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.into_owned() }
}

pub fn to_csv(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = header.iter().map(|h| field(h)).collect::<Vec<_>>().join(",");
    out.push('\n');
    for r in rows {
        out.push_str(&r.iter().map(|c| field(c)).collect::<Vec<_>>().join(","));
        out.push('\n');
    }
    out
}

/// Offers `text` as a file download (a blob link, so nothing goes back to the server).
pub fn download(name: &str, mime: &str, text: &str) {
    let Some(doc) = web_sys::window().and_then(|w| w.document()) else { return };
    let parts = js_sys::Array::of1(&wasm_bindgen::JsValue::from_str(text));
    let opts = web_sys::BlobPropertyBag::new();
    opts.set_type(mime);
    let Ok(blob) = web_sys::Blob::new_with_str_sequence_and_options(&parts, &opts) else { return };
    let Ok(url) = web_sys::Url::create_object_url_with_blob(&blob) else { return };
    if let Ok(a) = doc.create_element("a").map(|e| e.unchecked_into::<web_sys::HtmlAnchorElement>()) {
        a.set_href(&url);
        a.set_download(name);
        if let Some(body) = doc.body() {
            let _ = body.append_child(&a);
            a.click();
            let _ = body.remove_child(&a);
        }
    }
    let _ = web_sys::Url::revoke_object_url(&url);
}

/// A query parameter of the current address.
pub fn query_param(name: &str) -> Option<String> {
    let search = web_sys::window()?.location().search().ok()?;
    search.trim_start_matches('?').split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| js_sys::decode_uri_component(v).ok().and_then(|s| s.as_string()).unwrap_or_default())
    })
}

/// Replaces a query parameter in the address bar without reloading.
pub fn set_query_param(name: &str, value: &str) {
    let Some(w) = web_sys::window() else { return };
    let path = w.location().pathname().unwrap_or_default();
    let url = format!("{path}?{name}={value}");
    if let Ok(h) = w.history() {
        let _ = h.replace_state_with_url(&wasm_bindgen::JsValue::NULL, "", Some(&url));
    }
}

pub fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

pub fn num(x: Option<f64>, digits: usize) -> String {
    x.filter(|v| v.is_finite()).map_or("–".into(), |v| format!("{v:.digits$}"))
}

/// `0.62 [0.55, 0.70]`.
pub fn interval(i: Option<&apl_shared::Interval>) -> String {
    i.map_or("–".into(), |i| format!("{:.3} [{:.3}, {:.3}]", i.estimate, i.lo, i.hi))
}

pub fn rate_interval(i: Option<&apl_shared::RateInterval>) -> String {
    i.map_or("–".into(), |i| format!("{} [{}, {}] (n = {})", pct(i.rate), pct(i.low), pct(i.high), i.n))
}

/// A short local date-time for a Unix-millisecond time.
pub fn when(ms: i64) -> String {
    let d = js_sys::Date::new(&wasm_bindgen::JsValue::from_f64(ms as f64));
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}",
        d.get_full_year(),
        d.get_month() + 1,
        d.get_date(),
        d.get_hours(),
        d.get_minutes()
    )
}

/// The last 8 characters of an id (UUIDv7 ids share their leading, time-based digits).
pub fn short(id: &str) -> String {
    id.chars().rev().take(8).collect::<Vec<_>>().into_iter().rev().collect()
}

/// A time left as people say it: "45 s", "1 min 40 s", "2 h 05 min".
pub fn duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => match s % 60 {
            0 => format!("{} min", s / 60),
            r => format!("{} min {r} s", s / 60),
        },
        _ => format!("{} h {:02} min", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::duration;

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(duration(0.4), "0 s");
        assert_eq!(duration(44.6), "45 s");
        assert_eq!(duration(100.0), "1 min 40 s");
        assert_eq!(duration(120.0), "2 min");
        assert_eq!(duration(7500.0), "2 h 05 min");
        assert_eq!(duration(-3.0), "0 s");
    }
}
