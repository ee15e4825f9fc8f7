//! Strata's built-in dashboard, embedded in the binary so it works offline and needs no CDN.
//!
//! The dashboard is one page (`assets/index.html`) with a plain ES module (`assets/app.js`) and
//! no build step: it reads the Prometheus and device APIs over `fetch` and live updates over the
//! `/api/v1/stream` WebSocket. Charts are [uPlot](https://github.com/leeoniya/uPlot) 1.6.32,
//! taken from npm as its built file with its MIT license (`assets/vendor/`). The server maps
//! `/` to [`INDEX`] and `/ui/<path>` to [`asset`].

use std::sync::OnceLock;

/// One embedded file.
#[derive(Debug)]
pub struct Asset {
    /// Its path under `/ui/`.
    pub path: &'static str,
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its bytes.
    pub body: &'static [u8],
    etag: OnceLock<String>,
}

impl Asset {
    /// A strong `ETag` of the body (quoted), computed once: the server answers
    /// `If-None-Match` with 304 so a reload costs no transfer.
    pub fn etag(&self) -> &str {
        self.etag
            .get_or_init(|| format!("\"{:016x}\"", xxhash_rust::xxh3::xxh3_64(self.body)))
    }
}

macro_rules! asset {
    ($path:literal, $type:literal) => {
        Asset {
            path: $path,
            content_type: $type,
            body: include_bytes!(concat!("../assets/", $path)),
            etag: OnceLock::new(),
        }
    };
}

static ASSETS: [Asset; 6] = [
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("app.js", "text/javascript; charset=utf-8"),
    asset!("app.css", "text/css; charset=utf-8"),
    asset!("vendor/uPlot.iife.min.js", "text/javascript; charset=utf-8"),
    asset!("vendor/uPlot.min.css", "text/css; charset=utf-8"),
    asset!("vendor/uPlot.LICENSE", "text/plain; charset=utf-8"),
];

/// The page served at `/`.
pub static INDEX: &Asset = &ASSETS[0];

/// The embedded file at `path` (relative to `/ui/`), if there is one.
pub fn asset(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.path == path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_found_by_its_path_and_tagged_by_its_bytes() {
        for a in &ASSETS {
            assert!(std::ptr::eq(asset(a.path).unwrap(), a));
            assert!(!a.body.is_empty());
        }
        assert_eq!(INDEX.path, "index.html");
        assert_ne!(INDEX.etag(), asset("app.js").unwrap().etag());
        assert!(asset("../Cargo.toml").is_none());
        assert!(asset("").is_none());
    }

    #[test]
    fn the_page_loads_only_embedded_files() {
        let page = std::str::from_utf8(INDEX.body).unwrap();
        for src in page.split(['"', '\'']).filter(|s| s.starts_with("/ui/")) {
            assert!(asset(&src[4..]).is_some(), "{src} is not embedded");
        }
        assert!(!page.contains("http://") && !page.contains("https://"));
    }
}
