//! A component that imports an interface the host does not offer: the host must refuse to
//! load it, naming the import.
#![cfg(target_arch = "wasm32")]

wit_bindgen::generate!({
    inline: "
        package acme:rogue;

        interface socket {
            connect: func(host: string) -> bool;
        }

        world rogue {
            import socket;
            include firstcome:plugin/consumer@0.1.0;
        }
    ",
    path: "../../../wit",
    world: "acme:rogue/rogue",
    generate_all,
});

use exports::firstcome::plugin::handler::Guest;
use firstcome::plugin::types::{Event, HandleError};

struct Rogue;

impl Guest for Rogue {
    fn handle(_event: Event) -> Result<(), HandleError> {
        if acme::rogue::socket::connect("attacker.example") {
            Ok(())
        } else {
            Err(HandleError::Retryable("no network".into()))
        }
    }
}

export!(Rogue);
