//! Collecting every configuration error at once, each with its file, line and key.

use std::ops::Range;

use super::{Config, ConfigError};

/// The errors found so far in one configuration.
pub(crate) struct Report<'a> {
    config: &'a Config,
    /// What was found, in the order it was found.
    pub errors: Vec<ConfigError>,
}

impl<'a> Report<'a> {
    /// An empty report on `config`.
    pub fn new(config: &'a Config) -> Self {
        Report {
            config,
            errors: Vec::new(),
        }
    }

    /// The configuration's text (for finding keys serde gives no span for).
    pub fn text(&self) -> &str {
        &self.config.source.text
    }

    /// Record an error at `span` (a byte range of the file, when known) of `key`.
    pub fn add(&mut self, span: Option<Range<usize>>, key: String, message: impl Into<String>) {
        self.errors
            .push(self.config.error_at(span, key, message.into()));
    }
}
