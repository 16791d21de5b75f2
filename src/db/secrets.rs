//! Secret maintenance: master-key rotation of provider credential envelopes, virtual key rotation.
