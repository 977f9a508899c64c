{{/*
The alert rules, as the `groups:` of a Prometheus rules file. templates/prometheusrule.yaml puts
them in a PrometheusRule; `cargo xtask render` writes them to deploy/rules/credwatch.rules.yaml
(with the default values), where promtool tests them.
*/}}
{{- define "credwatch.rules" -}}
{{- $a := .Values.alerts -}}
{{- $job := default (include "credwatch.fullname" .) $a.job -}}
{{- $rb := $a.runbookBaseUrl -}}
{{- /* A credential: volume/file (pod namespace/name, node); host credentials have no pod. */ -}}
{{- $cred := `{{ $labels.volume }}/{{ $labels.file }} ({{ with $labels.pod }}pod {{ with $labels.namespace }}{{ . }}/{{ end }}{{ . }}, {{ end }}node {{ or $labels.node $labels.instance }})` -}}
{{- $volume := `volume {{ $labels.volume }} of pod {{ with $labels.namespace }}{{ . }}/{{ end }}{{ $labels.pod }} (node {{ or $labels.node $labels.instance }})` -}}
{{- $file := `{{ $labels.volume }}/{{ $labels.file }}` -}}
{{- $reader := `container {{ $labels.container }} of pod {{ with $labels.namespace }}{{ . }}/{{ end }}{{ $labels.pod }} (node {{ or $labels.node $labels.instance }})` -}}
groups:
  - name: credwatch.credentials
    rules:
      - alert: CredwatchCertificateExpiring
        expr: |
          (credwatch_credential_expiry_timestamp_seconds - time() < {{ $a.certificateExpiryWarningDays }} * 86400)
          * ignoring (kind, source, pod_uid, service_account) group_left (kind, source)
            credwatch_credential_info{kind="certificate"}
        for: 15m
        labels:
          severity: warning
        annotations:
          summary: >-
            Certificate {{ $cred }} expires in {{`{{ $value | humanizeDuration }}`}}.
          description: >-
            The leaf certificate in {{ $cred }}, from {{`{{ $labels.source }}`}}, expires in
            {{`{{ $value | humanizeDuration }}`}} and no newer one has been written. Check the
            issuer (cert-manager Certificate, the Secret's owner) and renew it.
          runbook_url: {{ $rb }}#credwatchcertificateexpiring
      - alert: CredwatchCertificateExpiring
        expr: |
          (credwatch_credential_expiry_timestamp_seconds - time() < {{ $a.certificateExpiryCriticalDays }} * 86400)
          * ignoring (kind, source, pod_uid, service_account) group_left (kind, source)
            credwatch_credential_info{kind="certificate"}
        for: 15m
        labels:
          severity: critical
        annotations:
          summary: >-
            Certificate {{ $cred }} expires in {{`{{ $value | humanizeDuration }}`}}.
          description: >-
            The leaf certificate in {{ $cred }}, from {{`{{ $labels.source }}`}}, expires in
            {{`{{ $value | humanizeDuration }}`}} (a negative value: it has expired) and no newer
            one has been written. Renew it now; TLS handshakes fail at expiry.
          runbook_url: {{ $rb }}#credwatchcertificateexpiring
      - alert: CredwatchTokenExpiringWithoutRotation
        expr: |
          (credwatch_credential_expiry_timestamp_seconds - time() < {{ $a.tokenExpiryMinutes }} * 60)
          * ignoring (kind, source, pod_uid, service_account) group_left (kind, source)
            credwatch_credential_info{kind=~"serviceaccount_token|jwt"}
        for: 2m
        labels:
          severity: critical
        annotations:
          summary: >-
            Token {{ $cred }} expires in {{`{{ $value | humanizeDuration }}`}} and has not been replaced.
          description: >-
            The token in {{ $cred }} ({{`{{ $labels.kind }}`}}, {{`{{ $labels.source }}`}})
            expires in {{`{{ $value | humanizeDuration }}`}} (negative: expired) and its file holds
            no newer one. Whoever writes it (the kubelet for projected tokens, a Vault agent, a
            CSI driver) has stopped: check that writer's logs.
          runbook_url: {{ $rb }}#credwatchtokenexpiringwithoutrotation
      - alert: CredwatchReaderHoldsExpiredToken
        expr: |
          time() - credwatch_credential_reader_held_expiry_timestamp_seconds{container!~"_.*"} > 0
        for: 5m
        labels:
          severity: critical
        annotations:
          summary: >-
            The {{ $reader }} last read {{ $file }} when it held a token that expired {{`{{ $value | humanizeDuration }}`}} ago.
          description: >-
            The newest generation of {{ $file }} that {{ $reader }} has read expired
            {{`{{ $value | humanizeDuration }}`}} ago: if it keeps the token in memory, its calls
            fail now. Make it re-read the file (or restart it), then fix the client to reload
            tokens from disk.
          runbook_url: {{ $rb }}#credwatchreaderholdsexpiredtoken
      - alert: CredwatchReaderBehindAfterRotation
        expr: |
          credwatch_credential_reader_generation_lag{container!~"_.*"} > 0
        for: {{ $a.readerBehindFor }}
        labels:
          severity: warning
        annotations:
          summary: >-
            The {{ $reader }} has not re-read {{ $file }} for {{`{{ $value }}`}} rotation(s).
          description: >-
            {{ $file }} was rotated {{`{{ $value }}`}} time(s) since {{ $reader }} last read it,
            for longer than the kubelet's refresh window: it still uses the old credential. Check
            that the client reloads the file on change (or on a timer shorter than the rotation).
          runbook_url: {{ $rb }}#credwatchreaderbehindafterrotation
      - alert: CredwatchKubeletRefreshOverdue
        expr: |
          time() - credwatch_credential_refresh_due_timestamp_seconds > {{ $a.kubeletRefreshGraceSeconds }}
        for: 5m
        labels:
          severity: warning
        annotations:
          summary: >-
            The kubelet is {{`{{ $value | humanizeDuration }}`}} late refreshing {{ $cred }}.
          description: >-
            The projected service-account token {{ $cred }} should have been refreshed by the
            kubelet {{`{{ $value | humanizeDuration }}`}} ago (80% of its lifetime). Check the
            kubelet on that node (its logs, its connection to the API server, TokenRequest
            errors) before the token expires.
          runbook_url: {{ $rb }}#credwatchkubeletrefreshoverdue
      - alert: CredwatchCredentialNeverRead
        expr: |
          (
            sum without (container, file) (credwatch_credential_reads_total{pod!="", container!~"_.*"})
            or
            sum without (container, file) (credwatch_credential_reads_total{pod!="", container="_node"}) * 0
          ) == 0
        for: {{ $a.neverReadDays }}d
        labels:
          severity: info
        annotations:
          summary: >-
            No container has read the credentials of {{ $volume }} for {{ $a.neverReadDays }} days.
          description: >-
            The {{ $volume }} is mounted and no workload container of the pod has opened any of
            its files in {{ $a.neverReadDays }} days (the kubelet's and the node's reads do not
            count). An unused credential is exposure without use: remove the volume, or the
            projected token (automountServiceAccountToken: false). The fleet dashboard's "Mounted
            and never read" lists unused files of volumes that are used.
          runbook_url: {{ $rb }}#credwatchcredentialneverread
      - alert: CredwatchCredentialReadFromAnotherPod
        expr: |
          (increase(credwatch_credential_reads_total{container="_other_pod"}[30m]) > 0)
          or
          (
            credwatch_credential_reads_total{container="_other_pod"} > 0
            unless credwatch_credential_reads_total{container="_other_pod"} offset 30m
          )
        labels:
          severity: warning
        annotations:
          summary: >-
            A process of another pod read {{ $cred }}.
          description: >-
            A process in another pod than its own opened {{ $cred }}. The agent's log line "credential read from outside
            its pod" names the reader. Find out why it can reach the file (a hostPath mount, a
            shared volume, a privileged pod); rotate the credential if the read was not expected.
          runbook_url: {{ $rb }}#credwatchcredentialreadfromanotherpod
  - name: credwatch.auth
    rules:
      - alert: CredwatchAuthFailureRatioHigh
        expr: |
          (
            sum without (operation, code) (rate(credwatch_auth_requests_total{code=~"401|403"}[10m]))
            /
            sum without (operation, code) (rate(credwatch_auth_requests_total[10m]))
          ) > {{ $a.authFailureRatio }}
          and
          sum without (operation, code) (increase(credwatch_auth_requests_total{code=~"401|403"}[10m])) >= 3
        for: 5m
        labels:
          severity: warning
        annotations:
          summary: >-
            The {{ $reader }} gets 401/403 from {{`{{ $labels.endpoint }}`}} on {{`{{ $value | humanizePercentage }}`}} of its requests.
          description: >-
            {{`{{ $value | humanizePercentage }}`}} of the auth requests of {{ $reader }} to
            {{`{{ $labels.endpoint }}`}} were refused (401, 403) over 10 minutes. Look at the
            credentials it read (the workload dashboard, the agent's auth-failure log lines):
            an expired or rotated-away token, a revoked role.
          runbook_url: {{ $rb }}#credwatchauthfailureratiohigh
      - alert: CredwatchAuthEndpointUnreachable
        expr: |
          sum without (result) (increase(credwatch_auth_connections_total{result=~"failed|refused"}[{{ $a.authUnreachableMinutes }}m])) > 0
          unless
          sum without (result) (increase(credwatch_auth_connections_total{result="established"}[{{ $a.authUnreachableMinutes }}m])) > 0
        for: 1m
        labels:
          severity: warning
        annotations:
          summary: >-
            The {{ $reader }} cannot reach {{`{{ $labels.endpoint }}`}}.
          description: >-
            Every connect of {{ $reader }} to {{`{{ $labels.endpoint }}`}} in the last
            {{ $a.authUnreachableMinutes }} minutes failed or was refused. Its tokens cannot be
            issued or renewed: check the endpoint, DNS, network policies and egress from the node.
          runbook_url: {{ $rb }}#credwatchauthendpointunreachable
  - name: credwatch.agent
    rules:
      - alert: CredwatchEventsLost
        expr: |
          increase(credwatch_events_lost_total[10m]) > 0
        labels:
          severity: warning
        annotations:
          summary: >-
            credwatch on {{`{{ or $labels.node $labels.instance }}`}} dropped {{`{{ $value | humanize }}`}} events at stage {{`{{ $labels.stage }}`}}.
          description: >-
            The agent on {{`{{ or $labels.node $labels.instance }}`}} lost events at stage
            {{`{{ $labels.stage }}`}} in the last 10 minutes: its counts on that node are incomplete.
            The runbook says what each stage means and which limit to raise.
          runbook_url: {{ $rb }}#credwatcheventslost
      - alert: CredwatchProbeDetached
        expr: |
          credwatch_probe_attached == 0
        for: 5m
        labels:
          severity: critical
        annotations:
          summary: >-
            credwatch's probe {{`{{ $labels.probe }}`}} is not attached on {{`{{ or $labels.node $labels.instance }}`}}.
          description: >-
            The probe {{`{{ $labels.probe }}`}} is not attached on
            {{`{{ or $labels.node $labels.instance }}`}}: reads through it are not seen. Run
            `credwatch check` on that node and read the agent's log from its start.
          runbook_url: {{ $rb }}#credwatchprobedetached
      - alert: CredwatchPodMetadataDown
        expr: |
          credwatch_pod_metadata_up == 0
        for: 10m
        labels:
          severity: warning
        annotations:
          summary: >-
            credwatch on {{`{{ or $labels.node $labels.instance }}`}} cannot watch pods.
          description: >-
            The agent on {{`{{ or $labels.node $labels.instance }}`}} has no pod metadata: new
            pods are labelled by uid and container id until it is back. Check its log ("pod
            metadata is down"), its ServiceAccount and RBAC, and the API server.
          runbook_url: {{ $rb }}#credwatchpodmetadatadown
      - alert: CredwatchAgentAbsent
        expr: |
          up{job="{{ $job }}"} == 0
          or on (node)
          (kube_node_info unless on (node) up{job="{{ $job }}"})
          or
          absent(up{job="{{ $job }}"})
        for: 10m
        labels:
          severity: warning
        annotations:
          summary: >-
            No credwatch agent is scraped for {{`{{ or $labels.node $labels.instance "any node" }}`}}.
          description: >-
            Prometheus scrapes no working credwatch agent for
            {{`{{ or $labels.node $labels.instance "any node" }}`}} (job {{ $job }}): credential reads there
            go unseen. Check the DaemonSet's pod on that node (kubectl -n credwatch get pods -o
            wide), its events and logs.
          runbook_url: {{ $rb }}#credwatchagentabsent
{{- end -}}
