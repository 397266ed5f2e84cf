"""The Hydra config: where it lives and composing it (`compose`), and every scalar key described once (`schema`)."""
