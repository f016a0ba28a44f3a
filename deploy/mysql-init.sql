-- One database per Tern service, on one MySQL 8 server (the services may
-- share a server, never tables). The official MySQL image runs this once,
-- when it initialises an empty data directory, after creating the user
-- named by MYSQL_USER (`tern`). Each service creates its own tables
-- (migrations) when it starts.
--
-- Used by docker-compose.yml; k8s/overlays/dev/mysql-init.sql is a copy
-- (kustomize only reads files below its overlay), and
-- deploy/validate-deploy.sh checks that the two are identical.
CREATE DATABASE IF NOT EXISTS tern_auth CHARACTER SET utf8mb4;
CREATE DATABASE IF NOT EXISTS tern_group CHARACTER SET utf8mb4;
CREATE DATABASE IF NOT EXISTS tern_message CHARACTER SET utf8mb4;
CREATE DATABASE IF NOT EXISTS tern_offline CHARACTER SET utf8mb4;
GRANT ALL PRIVILEGES ON tern_auth.* TO 'tern'@'%';
GRANT ALL PRIVILEGES ON tern_group.* TO 'tern'@'%';
GRANT ALL PRIVILEGES ON tern_message.* TO 'tern'@'%';
GRANT ALL PRIVILEGES ON tern_offline.* TO 'tern'@'%';
