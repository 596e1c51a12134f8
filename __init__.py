"""chanos: an operating-system personality built on lightweight messages and channels.

The parts: `chanos.personality` (the message model and the system-call protocol),
`chanos.drivers` (block-device driver actors), `chanos.fs` (the ext4-compatible file
system as a society of actors) and `chanos.compat` (the FUSE front end and the CLI).
"""

__version__ = "0.1.0"
