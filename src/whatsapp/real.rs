//! placeholder
use super::{InboundSink, WhatsAppClient, WhatsAppError};
use async_trait::async_trait;
use std::path::PathBuf;
use std::sync::Arc;
pub struct RealOptions {
    pub url: Option<String>,
    pub state_dir: PathBuf,
}
#[derive(Debug, thiserror::Error)]
#[error("x")]
pub struct RealError;
pub struct RealWhatsApp;
impl RealWhatsApp {
    pub async fn start(
        _o: RealOptions,
        s: Arc<dyn InboundSink>,
    ) -> Result<Arc<RealWhatsApp>, RealError> {
        s.connection(super::ConnectionState::NotLinked);
        Ok(Arc::new(RealWhatsApp))
    }
    pub async fn shutdown(&self) {}
}
#[async_trait]
impl WhatsAppClient for RealWhatsApp {
    async fn send_text(&self, _g: &str, _m: &str, _t: &str) -> Result<(), WhatsAppError> {
        Err(WhatsAppError::NotLinked)
    }
    async fn group_subject(&self, _g: &str) -> Result<String, WhatsAppError> {
        Err(WhatsAppError::NotLinked)
    }
}
