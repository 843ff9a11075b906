"""The core: methods, validation, access policy, audit; no protocol and no I/O."""
