// Package e2e holds the end-to-end tests: the real server and the real XDP program on a veth pair
// between two network namespaces, driven by real clients. It has no code outside its tests.
package e2e
