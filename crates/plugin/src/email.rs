//! The email capability's sender: SMTP through lettre (plain, STARTTLS or TLS, with
//! credentials from the configuration), or, in the embedded default, a folder of `.eml` files
//! so that the demo runs offline.

use std::path::PathBuf;
use std::time::Duration;

use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::services::SendError;
use crate::config::{EmailConfig, SmtpTls};

/// Where emails go.
#[derive(Debug)]
pub struct Mailer {
    from: Mailbox,
    transport: Transport,
}

#[derive(Debug)]
enum Transport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    Folder(AsyncFileTransport<Tokio1Executor>, PathBuf),
}

impl Mailer {
    /// The configured SMTP relay, or the mail folder (`mail_dir`) when no host is set.
    pub fn from_config(config: &EmailConfig, default_dir: PathBuf) -> anyhow::Result<Self> {
        let from: Mailbox = config
            .from
            .parse()
            .map_err(|e| anyhow::anyhow!("email.from {:?}: {e}", config.from))?;
        let transport = match &config.smtp_host {
            Some(host) => {
                let mut builder = match config.tls {
                    SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host),
                    SmtpTls::Starttls => {
                        AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host)?
                    }
                    SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(host)?,
                };
                if let Some(port) = config.smtp_port {
                    builder = builder.port(port);
                }
                // Credentials over a connection anyone on the path can read: refused unless
                // the operator says the path is private (`email.allow_plaintext_auth`).
                if config.username.is_some()
                    && config.tls == SmtpTls::None
                    && !config.allow_plaintext_auth
                {
                    anyhow::bail!(
                        "email.username is set with email.tls = \"none\": the SMTP password \
                         would cross the network in the clear. Use tls = \"starttls\" or \
                         \"tls\", or set email.allow_plaintext_auth = true for a relay on a \
                         private link"
                    );
                }
                if let Some(user) = &config.username {
                    let password = config
                        .password
                        .as_ref()
                        .map(|p| p.expose().to_owned())
                        .unwrap_or_default();
                    builder = builder.credentials(Credentials::new(user.clone(), password));
                }
                builder = builder.timeout(Some(Duration::from_millis(config.timeout_ms)));
                Transport::Smtp(builder.build())
            }
            None => {
                let dir = config.mail_dir.clone().unwrap_or(default_dir);
                std::fs::create_dir_all(&dir)
                    .map_err(|e| anyhow::anyhow!("creating mail folder {}: {e}", dir.display()))?;
                Transport::Folder(AsyncFileTransport::new(&dir), dir)
            }
        };
        Ok(Self { from, transport })
    }

    /// Where mail goes, for the start-up log.
    pub fn describe(&self) -> String {
        match &self.transport {
            Transport::Smtp(_) => "SMTP".to_owned(),
            Transport::Folder(_, dir) => format!("mail folder {}", dir.display()),
        }
    }

    pub async fn send(&self, to: &str, subject: &str, body: &str) -> Result<(), SendError> {
        let to: Mailbox = to
            .parse()
            .map_err(|e| SendError::Rejected(format!("the address is not one: {e}")))?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .header(ContentType::TEXT_PLAIN)
            .body(body.to_owned())
            .map_err(|e| SendError::Rejected(e.to_string()))?;
        match &self.transport {
            Transport::Smtp(smtp) => smtp.send(message).await.map(drop).map_err(|e| {
                if e.is_permanent() {
                    SendError::Rejected(e.to_string())
                } else {
                    SendError::Unavailable(e.to_string())
                }
            }),
            Transport::Folder(folder, _) => folder
                .send(message)
                .await
                .map(drop)
                .map_err(|e| SendError::Unavailable(e.to_string())),
        }
    }
}
