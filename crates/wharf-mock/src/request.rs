//! A request as the API families see it: the head's method, target and
//! headers, and the whole body.

use bytes::Bytes;

/// A request with its full body (any transfer-encoding removed).
#[derive(Debug)]
pub(crate) struct Request {
    pub method: String,
    /// The request target, with the query string.
    pub path: String,
    /// Headers in arrival order, names lowercased, values trimmed.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The request target without the query string.
    pub fn route(&self) -> &str {
        match self.path.find('?') {
            Some(i) => &self.path[..i],
            None => &self.path,
        }
    }

    /// The query string (without `?`), if any.
    pub fn query(&self) -> Option<&str> {
        self.path.split_once('?').map(|(_, q)| q)
    }
}
