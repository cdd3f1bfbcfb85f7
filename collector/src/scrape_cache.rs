//! The last /metrics body, reused by scrapes that come soon after it was rendered (two
//! Prometheus replicas, a retry, a person's curl), and its gzip form for scrapers that
//! ask for it (Prometheus does). A render of a large fleet takes a good part of a
//! second of CPU; readings arrive once per agent interval, so a body younger than that
//! says nearly what a new render would.
//!
//! A body is reused only while younger than [`REUSE_PER_RENDER`] times its render
//! took, and never past the configured age: however often it is scraped, rendering
//! takes at most about a tenth of a core, and a small fleet, rendered in a
//! millisecond, is rendered fresh for every scrape.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;
use http::HeaderMap;
use http::header::ACCEPT_ENCODING;
use tokio::sync::Mutex;

/// A body is reused for at most this many times its render took.
pub const REUSE_PER_RENDER: u32 = 10;

/// A rendered body and, once a scraper asked for it, its gzip form.
#[derive(Debug, Clone)]
struct Rendered {
    at: Instant,
    /// How long it took to render.
    took: Duration,
    plain: Bytes,
    gzip: Option<Bytes>,
}

/// A body ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    Plain(Bytes),
    Gzip(Bytes),
}

/// Why no body could be made.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("rendering /metrics failed")]
    Render,
    #[error("compressing /metrics failed: {0}")]
    Compress(std::io::Error),
}

/// Holds the newest body. One render at a time: scrapes that arrive during a render
/// wait for it and share it, rather than render the same fleet again side by side.
#[derive(Debug, Clone)]
pub struct ScrapeCache {
    max_age: Duration,
    last: Arc<Mutex<Option<Rendered>>>,
}

impl ScrapeCache {
    /// Bodies are reused for `max_age` after their render; zero renders every scrape.
    pub fn new(max_age: Duration) -> ScrapeCache {
        ScrapeCache {
            max_age,
            last: Arc::new(Mutex::new(None)),
        }
    }

    /// The body for a scrape: the cached one when young enough, else `render`'s (run
    /// off the async workers), gzip-compressed when `gzip` is asked for.
    pub async fn body<F>(&self, gzip: bool, render: F) -> Result<Body, CacheError>
    where
        F: FnOnce() -> String + Send + 'static,
    {
        let mut last = self.last.lock().await;
        let fresh = last.as_ref().filter(|r| r.at.elapsed() < self.keep_for(r));
        let mut rendered = match fresh {
            Some(r) => r.clone(),
            None => {
                let at = Instant::now();
                let text = tokio::task::spawn_blocking(render)
                    .await
                    .map_err(|_| CacheError::Render)?;
                let rendered = Rendered {
                    at,
                    took: at.elapsed(),
                    plain: Bytes::from(text),
                    gzip: None,
                };
                self.forget_after(&rendered);
                rendered
            }
        };
        if !gzip {
            let body = Body::Plain(rendered.plain.clone());
            *last = Some(rendered);
            return Ok(body);
        }
        let compressed = match rendered.gzip.clone() {
            Some(z) => z,
            None => {
                let plain = rendered.plain.clone();
                let z = tokio::task::spawn_blocking(move || compress(&plain))
                    .await
                    .map_err(|_| CacheError::Render)?
                    .map_err(CacheError::Compress)?;
                rendered.gzip = Some(z.clone());
                z
            }
        };
        *last = Some(rendered);
        Ok(Body::Gzip(compressed))
    }

    /// How long a body may be reused.
    fn keep_for(&self, r: &Rendered) -> Duration {
        self.max_age.min(r.took * REUSE_PER_RENDER)
    }

    /// Lets go of a body once it can no longer be reused: a large fleet's is tens of
    /// megabytes, not to be held between scrapes minutes apart.
    fn forget_after(&self, r: &Rendered) {
        let keep = self.keep_for(r);
        let (last, at) = (self.last.clone(), r.at);
        tokio::spawn(async move {
            tokio::time::sleep(keep).await;
            let mut last = last.lock().await;
            if last.as_ref().is_some_and(|r| r.at == at) {
                *last = None;
            }
        });
    }
}

/// gzip at its fastest level: a scrape's text is repetitive (metric and label names),
/// so the fast level already shrinks it about tenfold, for a fraction of the CPU of
/// the default level.
pub fn compress(plain: &[u8]) -> std::io::Result<Bytes> {
    let mut encoder = GzEncoder::new(Vec::with_capacity(plain.len() / 8), Compression::fast());
    encoder.write_all(plain)?;
    Ok(Bytes::from(encoder.finish()?))
}

/// Whether the request's Accept-Encoding takes gzip (RFC 9110 section 12.5.3: a
/// coding listed with q=0 is refused).
pub fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or_default();
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f64>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn headers(accept: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for a in accept {
            h.append(ACCEPT_ENCODING, a.parse().unwrap());
        }
        h
    }

    #[test]
    fn gzip_is_taken_when_listed_and_not_refused() {
        assert!(accepts_gzip(&headers(&["gzip"])));
        assert!(accepts_gzip(&headers(&["identity, GZIP;q=0.5"])));
        assert!(accepts_gzip(&headers(&["br", "gzip"])));
        assert!(accepts_gzip(&headers(&["*"])));
        assert!(!accepts_gzip(&headers(&[])));
        assert!(!accepts_gzip(&headers(&["identity"])));
        assert!(!accepts_gzip(&headers(&["gzip;q=0"])));
        assert!(!accepts_gzip(&headers(&["gzip; q=0.000"])));
        assert!(!accepts_gzip(&headers(&["x-gzip-ish"])));
    }

    /// A render that takes `took`, numbering each body.
    fn counted(
        renders: &Arc<AtomicUsize>,
        took: Duration,
    ) -> impl FnOnce() -> String + Send + 'static {
        let renders = renders.clone();
        move || {
            std::thread::sleep(took);
            let n = renders.fetch_add(1, Ordering::SeqCst) + 1;
            format!("render {n}\n").repeat(100)
        }
    }

    const SLOW: Duration = Duration::from_millis(30);

    #[tokio::test]
    async fn a_young_body_is_reused_and_an_old_one_rendered_again() {
        let renders = Arc::new(AtomicUsize::new(0));
        let cache = ScrapeCache::new(Duration::from_millis(200));
        let first = cache.body(false, counted(&renders, SLOW)).await.unwrap();
        let second = cache.body(false, counted(&renders, SLOW)).await.unwrap();
        assert_eq!(first, second);
        assert_eq!(renders.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(250)).await;
        let third = cache.body(false, counted(&renders, SLOW)).await.unwrap();
        assert_ne!(first, third);
        assert_eq!(renders.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_body_is_let_go_once_it_cannot_be_reused() {
        let renders = Arc::new(AtomicUsize::new(0));
        let cache = ScrapeCache::new(Duration::from_millis(100));
        cache.body(true, counted(&renders, SLOW)).await.unwrap();
        assert!(cache.last.lock().await.is_some());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(cache.last.lock().await.is_none());
    }

    #[tokio::test]
    async fn no_cache_renders_every_scrape() {
        let renders = Arc::new(AtomicUsize::new(0));
        let cache = ScrapeCache::new(Duration::ZERO);
        for _ in 0..3 {
            cache.body(true, counted(&renders, SLOW)).await.unwrap();
        }
        assert_eq!(renders.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_quick_render_is_reused_only_for_ten_times_as_long() {
        let renders = Arc::new(AtomicUsize::new(0));
        let cache = ScrapeCache::new(Duration::from_secs(60));
        let quick = Duration::from_millis(2);
        cache.body(false, counted(&renders, quick)).await.unwrap();
        tokio::time::sleep(quick * REUSE_PER_RENDER * 3).await;
        cache.body(false, counted(&renders, quick)).await.unwrap();
        assert_eq!(renders.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn the_gzip_body_inflates_to_the_plain_one() {
        let renders = Arc::new(AtomicUsize::new(0));
        let cache = ScrapeCache::new(Duration::from_secs(60));
        let Body::Gzip(z) = cache.body(true, counted(&renders, SLOW)).await.unwrap() else {
            panic!("asked for gzip");
        };
        let Body::Plain(plain) = cache.body(false, counted(&renders, SLOW)).await.unwrap() else {
            panic!("asked for plain");
        };
        let mut inflated = Vec::new();
        flate2::read::GzDecoder::new(z.as_ref())
            .read_to_end(&mut inflated)
            .unwrap();
        assert_eq!(inflated, plain.as_ref());
        assert!(z.len() < plain.len() / 5, "{} of {}", z.len(), plain.len());
        assert_eq!(renders.load(Ordering::SeqCst), 1);
    }
}
