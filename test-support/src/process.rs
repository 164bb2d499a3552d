//! Child processes a test starts (a stand-in, a paused installer, a registry): killed and
//! reaped when the test ends, an assertion failing first included, so none outlives it.

use std::process::Child;

/// A child killed (-9) and reaped on drop unless it has exited already.
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl std::ops::Deref for Reaped {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}
