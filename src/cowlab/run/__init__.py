"""run: a bench run's stages (check → prepare → run → cleanup), where it runs (natively or in
the kernel VM), and cleanup of what a dead run left."""
