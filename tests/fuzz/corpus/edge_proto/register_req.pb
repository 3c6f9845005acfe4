
tok-123cam 4edge