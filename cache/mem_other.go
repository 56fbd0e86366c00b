//go:build !linux

package cache

// allocPage takes a page from the Go heap where anonymous mappings are not used; it holds no
// pointers, so the collector does not scan it.
func allocPage() ([]byte, error) { return make([]byte, PageSize), nil }

func freePage([]byte) {}
