
dev-1k-abc