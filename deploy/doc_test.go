// Package deploy holds the deployment files (systemd unit, Kubernetes DaemonSet, Prometheus scrape
// config, Grafana dashboard) and, in its tests only, the checks that keep them honest: the metric
// names the binary exports (a golden list), their naming conventions, the metric names the dashboard
// queries, the capabilities the manifests grant, and a scale-out run of two servers behind one
// client.
package deploy
