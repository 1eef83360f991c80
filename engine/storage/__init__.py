"""The profile's SQLite database: opening, migrations and backups, the profile lock, the conversation
store and the records it reads and saves for exports and imports."""
