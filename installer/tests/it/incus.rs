// Tests for the incus module land here.
