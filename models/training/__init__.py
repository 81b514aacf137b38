"""Training identity adapters (ConsistentID, Visual Persona) with attention-localisation losses. Plain torch."""
