//! WhatsApp Web upstream (skeleton; filled by issue 4).
