-- Demo data for scripts/demo.sh: a small GitLab-like schema with the values that break
-- naive loaders (NULL vs '', tabs, newlines, backslashes, unicode, json, arrays).
CREATE TYPE issue_state AS ENUM ('opened', 'closed');
CREATE TABLE namespaces (id bigint PRIMARY KEY, name text NOT NULL, path text NOT NULL, created_at timestamptz NOT NULL);
CREATE TABLE projects (
  id bigint PRIMARY KEY, namespace_id bigint, name text, description text,
  visibility_level int, star_count int, created_at timestamp, updated_at timestamp,
  topics text[], settings jsonb
);
CREATE TABLE issues (
  id bigint PRIMARY KEY, project_id bigint, title text, description text, state issue_state,
  weight numeric(10,2), created_at timestamp NOT NULL, updated_at timestamp NOT NULL
);
INSERT INTO namespaces SELECT g, 'group ' || g, 'group-' || g, timestamptz '2020-01-01 00:00:00+00' + g * interval '1 day'
  FROM generate_series(1, 50) g;
INSERT INTO projects SELECT g, 1 + g % 50, 'project ' || g,
  CASE g % 5 WHEN 0 THEN NULL WHEN 1 THEN '' WHEN 2 THEN E'line one\nline\ttwo' WHEN 3 THEN E'back\\slash \\N' ELSE 'café 日本 🎉' END,
  (g % 3) * 10, g % 17, timestamp '2021-01-01' + g * interval '1 hour', timestamp '2024-01-01' + g * interval '1 minute',
  ARRAY['ruby', CASE WHEN g % 2 = 0 THEN NULL ELSE 'go' END, 'with "quote"'],
  jsonb_build_object('g', g, 'flags', jsonb_build_array(true, null), 'note', E'tab\there')
  FROM generate_series(1, 2000) g;
INSERT INTO issues SELECT g, 1 + g % 2000, 'issue ' || g, repeat('text ', g % 20),
  CASE WHEN g % 3 = 0 THEN 'closed'::issue_state ELSE 'opened' END,
  CASE WHEN g % 7 = 0 THEN NULL ELSE (g % 100) / 4.0 END,
  timestamp '2023-01-01' + g * interval '10 minutes', timestamp '2024-01-01' + g * interval '10 seconds'
  FROM generate_series(1, 20000) g;
