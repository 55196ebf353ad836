-- Each service owns its own database (SPEC §2).
CREATE DATABASE billing;
CREATE DATABASE payment;
